"""Training only (never loaded by ``import kp2d``): the step, the trainer, its logger, the over-fit demo."""
