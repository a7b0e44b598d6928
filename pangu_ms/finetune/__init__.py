"""Fine-tuning a pretrained PanGu-alpha on a task (the `finetune` command).

- `run`: `finetune(job)`: evaluate, train, evaluate again, save a normal checkpoint.
- `loss`: the label-token loss with the auxiliary LM loss; `rows`: rows and length buckets;
- `ema`: the weight average that is evaluated and saved; `lora`: low-rank adapters.
"""
