"""ftjax: fine-tuning language models on one functional JAX core."""
from setuptools import find_packages, setup

setup(
    name="ftjax",
    version="0.1.0",
    description="A pure-JAX research library for fine-tuning language models.",
    packages=find_packages(include=["ftjax", "ftjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "ml-collections>=1.0",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "gguf>=0.10",
        "einops>=0.8",
        "jinja2>=3.1",
        "numpy>=1.26",
        "tqdm>=4.66",
        # TensorBoard event files without a TensorFlow dependency.
        "tensorboardX>=2.6",
        # The fields' own metric implementations: macro-F1 (scikit-learn), entity-level F1
        # (seqeval), BLEU / chrF (sacrebleu); numbers comparable with papers, not ours.
        "scikit-learn>=1.3",
        "seqeval>=1.2.2",
        "sacrebleu>=2.4",
        # Suggests the right encoding when a local data file does not decode (ftjax.data.readers).
        "charset-normalizer>=3",
        # Reads ONNX exports of BERT encoders (paraphrase-MiniLM-L3-v2) with its numpy helpers:
        # the format's own reader, not a protobuf parser of ours.
        "onnx>=1.16",
        # WordNet's own database reader (synonyms for augmentation and word-substitution
        # attacks), reading the Debian wordnet-base files in place.
        "nltk>=3.9",
        # Reads the SWORD Bible modules behind the bible-es-en asset (ftjax.assets.bible).
        "pysword>=0.2.8",
    ],
    extras_require={
        # Reference implementations for parity tests and fixture scripts. torch is pinned to the
        # CPU build these machines carry; a looser spec pulls a multi-GB CUDA build.
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "torch==2.13.0",
            "transformers>=4.46",
            "accelerate>=1.0",
            "peft>=0.13",
            # Runs the ONNX exports our importer reads, for the parity test.
            "onnxruntime>=1.18",
            "datasets>=3.0",
            "tensorflow-datasets>=4.9.6",
            "matplotlib>=3.8",
            # The floors contract of .importlinter, checked by tests/test_layering.py.
            "import-linter>=2.1",
        ],
        "data": ["datasets>=3.0", "tensorflow-datasets>=4.9.6"],
        "sweep": ["matplotlib>=3.8"],  # ftjax sweep's plots
        "cuda": ["jax[cuda12]>=0.10,<0.13"],
    },
    entry_points={"console_scripts": ["ftjax=ftjax.cli:entry"]},
)
