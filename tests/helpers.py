"""Builders the test modules share (pytest puts tests/ on sys.path, so `from helpers import ...` works)."""

from empathy_workbook import sft, training


def sft_trainer(cfg, tiny_path, tokenizer, train_records, out_dir, eval_records=None):
    backend = training.prepare_backend(cfg.model, cfg.sft.train)
    model, peft_config = training.load_model(tiny_path, backend, cfg.sft.train, cfg.sft.lora)
    train_ds = sft.tokenized_dataset(train_records, tokenizer, cfg.sft.train.max_length)
    eval_ds = sft.tokenized_dataset(eval_records, tokenizer, cfg.sft.train.max_length) if eval_records else None
    args = sft.training_arguments(cfg.sft, backend, out_dir, has_eval=eval_ds is not None)
    args.disable_tqdm = True
    return sft.build_trainer(model, tokenizer, train_ds, args, eval_ds, peft_config,
                             training.standard_callbacks(cfg.sft.train, eval_ds is not None))
