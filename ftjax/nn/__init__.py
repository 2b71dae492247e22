"""Layer primitives: Dense, Embed, norms, attention, RoPE, remat and layer scans, and the math of
the PEFT methods that layers call (LoRA, bottleneck adapters, prefixes, soft prompts, (IA)^3),
each with its settings dataclass. Knows no architecture: ftjax.models builds on it."""
