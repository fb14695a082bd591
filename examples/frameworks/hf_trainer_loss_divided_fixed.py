"""HF Trainer with a custom compute_loss normalised over the whole accumulated batch, as the Trainer expects."""
# convcheck-args: --steps 3 --max-batches-per-epoch 8
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

torch.manual_seed(0)


class Pairs(torch.utils.data.Dataset):
    """Label 1 when the first token id is even: learnable in a few steps."""

    def __init__(self, n: int = 256) -> None:
        self.ids = torch.randint(1, 64, (n, 12))
        self.labels = (self.ids[:, 0] % 2 == 0).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class MyTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        logits = model(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch
        return (loss, logits) if return_outputs else loss


config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=16, num_labels=2)
model = BertForSequenceClassification(config)
args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, gradient_accumulation_steps=4,
                         num_train_epochs=2, learning_rate=1e-3, logging_steps=4, save_strategy="no", report_to=[],
                         use_cpu=True, seed=0, dataloader_num_workers=0)
MyTrainer(model=model, args=args, train_dataset=Pairs()).train()
