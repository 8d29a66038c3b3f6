"""The training loop: seeding, class-balanced batches, AMP, checkpoint/resume, validation, progress."""
