from lightning_app.main import console_main

console_main()
