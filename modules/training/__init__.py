"""Run mechanics the LightningModule and the CLI share (about the Trainer, not the network).

- ``optimizer.py``: parameter groups and learning-rate schedules; ``precision.py``: the precision for the machine.
- ``resume.py``: where a checkpoint stands and what is left to train; ``checkpoint_settings.py``: what a resume compares.
- ``sharding.py``: what FSDP / ZeRO-3 checkpoints and exports need; ``grad_norm.py``: the step's gradient norm before clipping.
"""
