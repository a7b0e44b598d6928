"""Training: AdamW + warmup/cosine (`optimizer`), loss-scaled train steps with clipping and
gradient accumulation (`step`), checkpoints and `load_for_inference` (`checkpoint`), the
pretraining loop (`loop`), metrics, loss plot and summary (`metrics`)."""
