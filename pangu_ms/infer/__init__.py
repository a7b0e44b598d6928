"""Generation with a K/V cache, sampling, MindIR export, LoRA and fine-tuning."""
