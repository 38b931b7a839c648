from lightning_app.main import main

main()
