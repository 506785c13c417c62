"""The baseline for the SFT benchmarks: the same training as a plain trl script in one process.

    python bench/plain_trl_sft.py MODEL_DIR DATA.jsonl OUTPUT_DIR '{"max_steps": 100, ...}'

No Prefect, no artifact store: load, LoRA, train with trl's SFTTrainer on the conversations,
save the adapter. Prints one JSON line with the trainer's token count and runtime.
"""

import json
import sys

from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def main() -> None:
    model_dir, data_path, output_dir, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data_path, split="train")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=output_dir,
            max_steps=settings["max_steps"],
            per_device_train_batch_size=settings["per_device_train_batch_size"],
            gradient_accumulation_steps=settings["gradient_accumulation_steps"],
            learning_rate=settings["learning_rate"],
            warmup_steps=settings["warmup_steps"],
            lr_scheduler_type="linear",
            optim="adamw_torch",
            weight_decay=0.01,
            logging_steps=1,
            save_strategy="no",
            seed=settings.get("seed", 3407),
            max_length=settings["max_seq_length"],
            report_to=[],
            use_cpu=True,
            # trl's SFTConfig defaults to bf16 autocast even on CPU; ours trains in float32 there (bf16 is
            # emulated, and several times slower, on CPUs without native support). Same arithmetic for both.
            bf16=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
            include_num_input_tokens_seen="non_padding",
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=settings["r"],
            lora_alpha=settings["lora_alpha"],
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_rslora=True,
            task_type="CAUSAL_LM",
        ),
    )
    result = trainer.train()
    trainer.model.save_pretrained(f"{output_dir}/adapter")
    tokens = int(trainer.state.num_input_tokens_seen)
    runtime = result.metrics["train_runtime"]
    print(json.dumps({"tokens": tokens, "train_runtime": runtime, "tokens_per_second": tokens / runtime, "final_loss": trainer.state.log_history[-2].get("loss")}))


if __name__ == "__main__":
    main()
