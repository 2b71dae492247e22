"""Text <-> token ids for ftjax models: one `Tokenizer` over a `tokenizers` backend.

Two sources: a GGUF file (the byte-level BPE rebuilt from its `tokenizer.ggml.*` metadata, as
llama.cpp stores it) and a Hugging Face tokenizer directory (`tokenizer.json` plus the optional
`tokenizer_config.json` / `special_tokens_map.json`). `save()` writes the HF layout back, so that
`transformers.AutoTokenizer.from_pretrained` reads an exported model's tokenizer unchanged.

The backend never pads or truncates: callers (the data pipeline, the generator) pick their own
lengths, and a backend that silently pads to 128 (all-MiniLM-L6-v2's tokenizer.json does) would
corrupt every length-dependent computation downstream.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from ftjax import assets
from ftjax.io.spm_bpe import spm_bpe_backend

# Roles of named special tokens, in the order transformers lists them; the chat template sees each
# as a variable (`bos_token`, ...), as it does in transformers.
SPECIAL_TOKEN_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                       "mask_token")

# When the config files do not name a role's token, these vocabulary entries are taken as it.
_VOCAB_FALLBACKS: dict[str, tuple[str, ...]] = {
    "bos_token": ("<s>", "<bos>", "<|begin_of_text|>"),
    "eos_token": ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>"),
    "unk_token": ("[UNK]", "<unk>"),
    "sep_token": ("[SEP]",),
    "pad_token": ("[PAD]", "<pad>", "<|pad|>"),
    "cls_token": ("[CLS]",),
    "mask_token": ("[MASK]", "<mask>"),
}

# llama.cpp's `tokenizer.ggml.token_type` values (llama_token_type).
_GGUF_TOKEN_TYPE_CONTROL = 3
_GGUF_TOKEN_TYPE_USER_DEFINED = 4

# GGUF `tokenizer.ggml.pre` names whose pre-tokenization we can rebuild exactly. SmolLM's splits
# digits one by one before the GPT-2 byte-level regex (its original tokenizer.json does the same).
_GGUF_PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}

# transformers writes ~1e30 for "no limit"; anything this large means the same to us.
_NO_LENGTH_LIMIT = 10**12


class TokenizerError(ValueError):
    """A tokenizer could not be built or used; the message names the file and what was wrong."""


class Tokenizer:
    """Encode/decode text and render chat prompts for one model.

    Attributes: `name`, `vocab_size` (including added tokens), `bos_id` / `eos_id` (None when the
    model has none), `pad_id` (the pad token, else the EOS token), `add_bos` (whether `encode`
    with special tokens prepends BOS), `chat_template` (Jinja source or None), `special_ids` (ids
    of all special added tokens, the ones `decode` skips), `special_tokens` (role -> token string,
    e.g. {"eos_token": "<|im_end|>"}), `model_max_length` (None when unknown), `source` (the file
    or directory it was read from, for error messages).

    The constructor takes ownership of `backend` and switches its padding and truncation off;
    `special_tokens` maps roles (SPECIAL_TOKEN_ROLES) to token strings that must be in the vocab.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        name: str,
        special_tokens: Mapping[str, str | None],
        chat_template: str | None = None,
        model_max_length: int | None = None,
        source: Path | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        # Callers do their own truncation and padding (see the module docstring).
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend

        unknown_roles = set(special_tokens) - set(SPECIAL_TOKEN_ROLES)
        if unknown_roles:
            raise TokenizerError(f"{self._where()}: unknown special-token roles {sorted(unknown_roles)}")
        tokens = {role: tok for role, tok in special_tokens.items() if tok is not None}
        for role, tok in tokens.items():
            if backend.token_to_id(tok) is None:
                raise TokenizerError(f"{self._where()}: {role} {tok!r} is not in the vocabulary")
        if "pad_token" not in tokens:
            # Decoder-only models rarely define a pad token; EOS is the usual stand-in, and attention
            # masks keep it from mattering.
            if "eos_token" not in tokens:
                raise TokenizerError(f"{self._where()}: no pad token and no EOS token to pad with")
            tokens["pad_token"] = tokens["eos_token"]
        self.special_tokens: dict[str, str] = {r: tokens[r] for r in SPECIAL_TOKEN_ROLES if r in tokens}

        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_id: int | None = self._role_id("bos_token")
        self.eos_id: int | None = self._role_id("eos_token")
        self.pad_id: int = self._role_id("pad_token")
        self.unk_id: int | None = self._role_id("unk_token")
        self.cls_id: int | None = self._role_id("cls_token")
        self.sep_id: int | None = self._role_id("sep_token")
        self.mask_id: int | None = self._role_id("mask_token")
        self.special_ids: frozenset[int] = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special)
        # Read off the backend rather than a config flag, so it cannot disagree with `encode`.
        self.add_bos: bool = self.bos_id is not None and self._framing()[0][:1] == [self.bos_id]

    # -- vocabulary ---------------------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._backend.id_to_token(int(i))

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer` (padding and truncation disabled)."""
        return self._backend

    # -- encode / decode ----------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        # Accepts numpy / jax integer arrays too: the backend wants Python ints.
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # -- chat ---------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """Render `messages` ([{"role": ..., "content": ...}, ...]) as transformers does."""
        if self.chat_template is None:
            raise TokenizerError(f"{self._where()} has no chat template; use a chat/instruct model's "
                                 f"tokenizer or format the prompt yourself")
        if not messages:
            raise TokenizerError("apply_chat_template needs at least one message")
        for message in messages:
            if not isinstance(message, Mapping):
                raise TokenizerError(f"chat messages must be dicts, got {message!r}")
        # transformers drops None-valued keys: templates test for a key's presence, not its value.
        plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
        template = _compile_chat_template(self.chat_template)
        return template.render(messages=plain, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **self.special_tokens)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, *, name: str | None = None,
                  fields=None) -> Tokenizer:
        """Rebuild the tokenizer stored in a GGUF file's metadata: byte-level BPE ("gpt2":
        SmolLM2, Llama 3) or SentencePiece BPE ("llama": Gemma, Llama 2; ftjax.io.spm_bpe).

        fields: the file's already-parsed `GGUFReader(path).fields`, to avoid parsing it twice.
        """
        path = Path(path)
        metadata = _GGUFMetadata(path, fields)
        model_type = metadata.get("tokenizer.ggml.model")
        if model_type not in ("gpt2", "llama"):
            raise TokenizerError(f"{path}: tokenizer.ggml.model is {model_type!r}; byte-level BPE "
                                 f"('gpt2') and SentencePiece BPE ('llama') GGUF tokenizers are "
                                 f"supported")
        tokens: list[str] = metadata.require("tokenizer.ggml.tokens")
        token_types: list[int] = metadata.require("tokenizer.ggml.token_type")
        if len(token_types) != len(tokens):
            raise TokenizerError(f"{path}: {len(tokens)} tokens but {len(token_types)} token types")
        vocab = {tok: i for i, tok in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError(f"{path}: tokenizer.ggml.tokens holds duplicate tokens")

        def token_for(key: str) -> str | None:
            i = metadata.get(key)
            if i is None:
                return None
            if not 0 <= int(i) < len(tokens):
                raise TokenizerError(f"{path}: {key} = {i} is outside the vocabulary ({len(tokens)})")
            return tokens[int(i)]

        if model_type == "llama":
            scores: list[float] = metadata.require("tokenizer.ggml.scores")
            if len(scores) != len(tokens):
                raise TokenizerError(f"{path}: {len(tokens)} tokens but {len(scores)} scores")
            # llama.cpp's default for SentencePiece models is to prepend a space.
            backend = spm_bpe_backend(
                tokens, scores, token_types, unk=token_for("tokenizer.ggml.unknown_token_id"),
                add_space_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", True)))
        else:
            backend = _byte_level_backend(path, metadata, vocab)
        # Control tokens (<|im_start|>, ...) must match as whole strings before BPE splits them, and
        # are what `decode(skip_special_tokens=True)` drops. Both kinds keep their GGUF ids.
        backend.add_special_tokens([
            tokenizers.AddedToken(tok, special=True, normalized=False)
            for tok, kind in zip(tokens, token_types) if kind == _GGUF_TOKEN_TYPE_CONTROL])
        backend.add_tokens([
            tokenizers.AddedToken(tok, special=False, normalized=False)
            for tok, kind in zip(tokens, token_types) if kind == _GGUF_TOKEN_TYPE_USER_DEFINED])

        special_tokens = {
            "bos_token": token_for("tokenizer.ggml.bos_token_id"),
            "eos_token": token_for("tokenizer.ggml.eos_token_id"),
            "unk_token": token_for("tokenizer.ggml.unknown_token_id"),
            "pad_token": token_for("tokenizer.ggml.padding_token_id"),
        }
        # llama.cpp's default when the key is absent is model-specific; for gpt2 BPE it is false.
        _set_bos_eos_framing(backend, bos=special_tokens["bos_token"], eos=special_tokens["eos_token"],
                             add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
                             add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
                             where=str(path))
        arch = metadata.get("general.architecture")
        context = metadata.get(f"{arch}.context_length") if arch else None
        return cls(backend, name=name or path.stem, special_tokens=special_tokens,
                   chat_template=metadata.get("tokenizer.chat_template"),
                   model_max_length=int(context) if context else None, source=path)

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike, *, name: str | None = None) -> Tokenizer:
        """Read a Hugging Face tokenizer directory (BERT-style or Llama-style)."""
        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerError(f"{path}: no tokenizer.json (a Hugging Face fast-tokenizer file) there")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as err:  # the Rust error type is not exported; keep its message
            raise TokenizerError(f"{tokenizer_file}: cannot be read by `tokenizers`: {err}") from err
        config = _read_json_object(path / "tokenizer_config.json")
        special_map = _read_json_object(path / "special_tokens_map.json")

        special_tokens: dict[str, str | None] = {}
        for role in SPECIAL_TOKEN_ROLES:
            token = _token_content(config.get(role)) or _token_content(special_map.get(role))
            if token is None:
                token = next((t for t in _VOCAB_FALLBACKS[role] if backend.token_to_id(t) is not None),
                             None)
            special_tokens[role] = token

        # Whether BOS/EOS get added is tokenizer.json's post-processor alone: transformers 5 drops
        # the config's add_bos_token/add_eos_token whenever a tokenizer.json exists, and so do we.

        max_length = config.get("model_max_length")
        if not isinstance(max_length, (int, float)) or max_length >= _NO_LENGTH_LIMIT:
            max_length = None
        return cls(backend, name=name or path.resolve().name, special_tokens=special_tokens,
                   chat_template=_chat_template_from_hf_dir(path, config),
                   model_max_length=int(max_length) if max_length else None, source=path)

    # -- export -------------------------------------------------------------------------------

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`.

        `transformers.AutoTokenizer.from_pretrained(out_dir)` then encodes, decodes and renders
        chat prompts exactly as this tokenizer does.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(out / "tokenizer.json"))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **self.special_tokens,
            # The backend's decoder already cleans up what it should; a second pass in transformers
            # would change the text.
            "clean_up_tokenization_spaces": False,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        # transformers 5 ignores these flags beside a tokenizer.json, but older versions and
        # Llama-specific classes rebuild the post-processor from them. Write them only when a
        # BOS/EOS template is exactly what ours does: a BERT-style [CLS] ... [SEP] post-processor
        # must never be replaced.
        with_specials, _ = self._framing()
        for add_bos, add_eos in ((False, False), (True, False), (False, True), (True, True)):
            framing = [self.bos_id] * add_bos + [self.eos_id] * add_eos
            if with_specials == framing and None not in framing:
                config["add_bos_token"], config["add_eos_token"] = add_bos, add_eos
                break
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        _write_json(out / "tokenizer_config.json", config)
        _write_json(out / "special_tokens_map.json", self.special_tokens)
        return out

    # -- helpers ------------------------------------------------------------------------------

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self._backend.token_to_id(token)

    def _framing(self) -> tuple[list[int], list[int]]:
        """Ids that `encode` adds around an empty text: (with special tokens, without)."""
        return (self._backend.encode("", add_special_tokens=True).ids,
                self._backend.encode("", add_special_tokens=False).ids)

    def _where(self) -> str:
        return f"tokenizer {self.name!r}" + (f" ({self.source})" if self.source else "")

    def __repr__(self) -> str:
        return (f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id}, add_bos={self.add_bos})")


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """A tokenizer from an asset name (see `ftjax.assets`), a .gguf file or an HF tokenizer dir."""
    candidate = Path(name_or_path).expanduser()
    if not candidate.exists() and str(name_or_path) not in assets.ASSETS:
        raise TokenizerError(
            f"{str(name_or_path)!r} does not exist and is not a known asset name "
            f"({', '.join(sorted(assets.ASSETS))}); expected a .gguf file or a directory holding "
            f"tokenizer.json")
    path = assets.resolve(name_or_path)
    name = str(name_or_path) if str(name_or_path) in assets.ASSETS else None
    if path.is_file() and path.suffix == ".gguf":
        return Tokenizer.from_gguf(path, name=name)
    if path.is_file() and path.name == "tokenizer.json":
        path = path.parent
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return Tokenizer.from_hf_dir(path, name=name)
    found = "a directory without tokenizer.json" if path.is_dir() else "a file that is not .gguf"
    raise TokenizerError(f"{path}: expected a .gguf file or a directory holding tokenizer.json, "
                         f"found {found}")


def _byte_level_backend(path: Path, metadata: "_GGUFMetadata",
                        vocab: dict[str, int]) -> tokenizers.Tokenizer:
    """The byte-level BPE model of a "gpt2" GGUF tokenizer (its merges are stored)."""
    pre = metadata.get("tokenizer.ggml.pre", "gpt2")
    if pre not in _GGUF_PRE_TOKENIZERS:
        raise TokenizerError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported "
                             f"(supported: {', '.join(sorted(_GGUF_PRE_TOKENIZERS))})")
    merges = []
    for i, merge in enumerate(metadata.require("tokenizer.ggml.merges")):
        pair = merge.split(" ")
        if len(pair) != 2:
            raise TokenizerError(f"{path}: tokenizer.ggml.merges[{i}] = {merge!r} is not 'left right'")
        merges.append((pair[0], pair[1]))
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = _GGUF_PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    return backend


# -- GGUF metadata ------------------------------------------------------------------------------


class _GGUFMetadata:
    """Key/value metadata of a GGUF file, decoded to Python values."""

    def __init__(self, path: Path, fields=None) -> None:
        import gguf  # deferred: only GGUF users pay for importing it

        if not path.is_file():
            raise TokenizerError(f"{path}: no such GGUF file")
        self.path = path
        try:
            self._fields = fields if fields is not None else gguf.GGUFReader(path).fields
        except Exception as err:  # gguf raises ValueError / struct errors on malformed files
            raise TokenizerError(f"{path}: not a readable GGUF file ({err})") from err
        self._value_type = gguf.GGUFValueType

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        return default if field is None else self._decode(field)

    def require(self, key: str) -> Any:
        if key not in self._fields:
            raise TokenizerError(f"{self.path}: GGUF metadata has no {key!r}")
        return self._decode(self._fields[key])

    def _decode(self, field: Any) -> Any:
        # gguf >= 0.11 decodes for us; older versions only expose raw parts plus indices into them.
        if hasattr(field, "contents"):
            return field.contents()
        string, array = self._value_type.STRING, self._value_type.ARRAY
        values = [field.parts[i] for i in field.data]
        item_type = field.types[-1]
        decoded = [bytes(v).decode("utf-8") if item_type == string else v.tolist()[0] for v in values]
        return decoded if field.types[0] == array else decoded[0]


# -- HF directory helpers -----------------------------------------------------------------------


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise TokenizerError(f"{path}: cannot be read as JSON ({err})") from err
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _token_content(value: Any) -> str | None:
    """A special token as configs store it: a string or a serialized AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _chat_template_from_hf_dir(path: Path, config: Mapping[str, Any]) -> str | None:
    # transformers >= 4.43 may save the template beside the config instead of inside it.
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- shared construction helpers ----------------------------------------------------------------


def _set_bos_eos_framing(backend: tokenizers.Tokenizer, *, bos: str | None, eos: str | None,
                         add_bos: bool, add_eos: bool, where: str) -> None:
    """Make `encode(add_special_tokens=True)` add BOS / EOS, the way transformers configures it."""
    if (add_bos and bos is None) or (add_eos and eos is None):
        missing = "BOS" if add_bos and bos is None else "EOS"
        raise TokenizerError(f"{where}: asks to add a {missing} token but defines none")
    if not add_bos and not add_eos:
        backend.post_processor = None
        return
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = single + " " + " ".join([f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
    special = [(tok, backend.token_to_id(tok)) for tok, on in ((bos, add_bos), (eos, add_eos)) if on]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                           special_tokens=special)


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str) -> Any:
    """Compile a chat template in the sandbox transformers uses (templates ship with models)."""
    import jinja2  # deferred: only chat users pay for importing it
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        # Jinja's own tojson HTML-escapes ("<" -> "\u003c"); transformers' does not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise TokenizerError(f"chat template does not parse (line {err.lineno}): {err.message}") from err
