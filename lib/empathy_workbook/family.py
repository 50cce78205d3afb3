"""What differs between model families, kept as data: one profile per family, found from the tokenizer.

Phase code never spells a family's special tokens. It asks ``family_of(tokenizer)`` (or
``profile_for_model_type``) for the end-of-turn token, the pad token, the stop words of the GGUF file,
whether a think block exists, how the system prompt travels, the default LoRA targets and the sampling
the family's authors advise. Adding a family is adding one ``FamilyProfile`` below plus its template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES_DIR = Path(__file__).parent / "templates"

# The seven projections of a Llama-style decoder block; Qwen3 and Gemma 3 name them the same way.
DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The split Qwen2/Qwen3 apply before byte-level BPE (contractions, letters, single digits, punctuation, spaces).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class FamilyProfile:
    """How one model family formats chats and stops; every field is read by phase code."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    end_of_turn: str  # the token that closes an assistant turn: what SFT teaches and generation stops on
    pad: str  # the pad token; never the end-of-turn token, or the model would learn to ignore its stop
    also_stop: tuple[str, ...]  # other tokens that end a generation (document end)
    bos: str  # text the template writes before the first turn ("" when the family has none)
    turn_start: str  # opening of a turn; "{role}" is replaced by the role name
    assistant_role: str  # the name the template writes for the assistant's turns
    system_as_turn: bool  # True: the system prompt is its own turn; False: it opens the first user turn
    think_block: bool  # the template writes an (empty) <think></think> block in non-thinking mode
    template: str  # file in templates/ written by this project for the family
    lora_targets: tuple[str, ...] = DECODER_PROJECTIONS
    sampling: dict = field(default_factory=dict)  # the family's published chat sampling advice
    # text the model's own template writes when a chat has no system message; this project's template never does
    default_system: str = ""

    @property
    def stop_words(self) -> list[str]:
        """Strings a llama.cpp / llama.rn client passes as `stop`: end of turn first."""
        return [self.end_of_turn, *self.also_stop]

    @property
    def generation_prompt(self) -> str:
        """What the rendered prompt ends with right before the model writes its answer."""
        return self.turn_start.replace("{role}", self.assistant_role)

    def template_text(self) -> str:
        return (TEMPLATES_DIR / self.template).read_text(encoding="utf-8")


QWEN3 = FamilyProfile(
    name="qwen3", model_types=("qwen3", "qwen2", "qwen3_moe"),
    end_of_turn="<|im_end|>", pad="<|endoftext|>", also_stop=("<|endoftext|>",), bos="",
    turn_start="<|im_start|>{role}\n", assistant_role="assistant", system_as_turn=True, think_block=True,
    template="qwen3_nonthinking.jinja",
    # Qwen's advice for non-thinking chat (greedy decoding loops on small Qwen3 models)
    sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0},
)

GEMMA3 = FamilyProfile(
    name="gemma3", model_types=("gemma3", "gemma3_text"),
    end_of_turn="<end_of_turn>", pad="<pad>", also_stop=("<eos>",), bos="<bos>",
    turn_start="<start_of_turn>{role}\n", assistant_role="model", system_as_turn=False, think_block=False,
    template="gemma3.jinja",
    # Google's advice for Gemma 3 chat
    sampling={"temperature": 1.0, "top_p": 0.95, "top_k": 64, "min_p": 0.0},
)

# ChatML turns without a think block, on a Llama-architecture model: SmolLM2's instruct models. It shares
# <|im_start|>, <|im_end|> and <|endoftext|> with Qwen3, so tokens alone cannot tell the two apart: the think
# token (in Qwen3's vocabulary, absent from SmolLM2's) and the model type do.
CHATML = FamilyProfile(
    name="chatml", model_types=("llama",),
    end_of_turn="<|im_end|>", pad="<|endoftext|>", also_stop=("<|endoftext|>",), bos="",
    turn_start="<|im_start|>{role}\n", assistant_role="assistant", system_as_turn=True, think_block=False,
    template="chatml.jinja",
    # SmolLM2's authors suggest a low temperature and top-p for chat; T 0.7 / top-p 0.8 measured well on the suite
    sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0},
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
)

PROFILES = (QWEN3, GEMMA3, CHATML)
THINK_TOKEN = "<think>"  # present in the vocabulary of exactly the families that have think_block


class UnknownFamilyError(ValueError):
    """A tokenizer or config that matches no profile: say what was looked for."""


def profile_named(name: str) -> FamilyProfile:
    for profile in PROFILES:
        if profile.name == name:
            return profile
    raise UnknownFamilyError(f"no model family {name!r}: known families are {[p.name for p in PROFILES]}")


def profile_for_model_type(model_type: str) -> FamilyProfile:
    """The profile of a transformers config.model_type ('qwen3', 'gemma3_text', ...)."""
    for profile in PROFILES:
        if model_type in profile.model_types:
            return profile
    raise UnknownFamilyError(f"model_type {model_type!r} belongs to no known family "
                             f"({ {p.name: p.model_types for p in PROFILES} }): add a FamilyProfile in family.py")


def has_token(tokenizer, token: str) -> bool:
    """Is `token` one entry of the vocabulary? (Compared by text: in SmolLM2's vocabulary the unknown token
    is <|endoftext|> itself, so "not the unknown id" would call a real token missing.)"""
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and token_id >= 0 and tokenizer.convert_ids_to_tokens(token_id) == token


def matching_profiles(tokenizer, model_type: str | None = None) -> list[FamilyProfile]:
    """Every profile this tokenizer (and, when given, config.model_type) fits.

    A profile fits when the vocabulary has its end-of-turn and pad tokens, has the think token exactly when
    the profile writes a think block, and (when a model type is given) the model type is the profile's.
    """
    has_think = has_token(tokenizer, THINK_TOKEN)
    return [p for p in PROFILES
            if has_token(tokenizer, p.end_of_turn) and has_token(tokenizer, p.pad)
            and has_think == p.think_block and (model_type is None or model_type in p.model_types)]


def family_of(tokenizer, model_type: str | None = None) -> FamilyProfile:
    """The one profile this tokenizer fits (tokens, think token; the model type too when given).

    The answer is cached on the tokenizer object: phases ask this for every example.
    """
    cached = getattr(tokenizer, "_empathy_family", None)
    if cached is not None and (model_type is None or model_type in cached.model_types):
        return cached
    matches = matching_profiles(tokenizer, model_type)
    if len(matches) != 1:
        wanted = {p.name: (p.end_of_turn, p.pad, f"think token: {p.think_block}", p.model_types) for p in PROFILES}
        raise UnknownFamilyError(f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}"
                                 f"{', model type ' + model_type if model_type else ''}) fits "
                                 f"{[p.name for p in matches] or 'no'} family; looked for {wanted}")
    try:
        tokenizer._empathy_family = matches[0]
    except AttributeError:  # a tokenizer that refuses new attributes: just don't cache
        pass
    return matches[0]


def stop_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens that end an answer for this tokenizer's family (end of turn first in the profile)."""
    profile = family_of(tokenizer)
    ids = {tokenizer.convert_tokens_to_ids(t) for t in profile.stop_words}
    return sorted(i for i in ids if i is not None and i >= 0)


def end_of_turn_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(family_of(tokenizer).end_of_turn)


def family_of_template(template: str) -> FamilyProfile:
    """The profile whose end-of-turn token a chat template writes, with a think block exactly when the
    profile has one (for GGUF files, which carry the template)."""
    matches = [p for p in PROFILES if p.end_of_turn in template and (THINK_TOKEN in template) == p.think_block]
    if len(matches) != 1:
        raise UnknownFamilyError(f"the chat template fits {[p.name for p in matches] or 'no'} family; looked for "
                                 f"{ {p.name: (p.end_of_turn, f'think block: {p.think_block}') for p in PROFILES} }")
    return matches[0]
