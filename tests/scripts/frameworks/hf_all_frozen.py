"""HF Trainer over a model whose every parameter was frozen: the first backward() fails."""
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

torch.manual_seed(0)
ids = torch.randint(1, 64, (64, 12))
data = [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(64)]
config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=16, num_labels=2)
model = BertForSequenceClassification(config)
model.requires_grad_(False)  # meant: model.bert.requires_grad_(False), keeping the classifier trainable
args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=16, max_steps=4,
                         save_strategy="no", report_to=[], use_cpu=True)
Trainer(model=model, args=args, train_dataset=data).train()
