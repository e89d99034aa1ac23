"""LoRA tools: what users do with a LoRA file once it exists (inspect, resize, merge, convert,
push to the Hub). Core functions here; the CLI (`lora-lab lora ...`) and REST are thin over them."""
