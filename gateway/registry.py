"""The served models: which pipelines this service runs, under which names, and which one a request's `model`
field picks.

The composition root (gateway/app.py) builds one `ServedModel` per served cross-encoder, in order (the first is
the default), and hands the `ServedModels` to the HTTP layer; every dialect passes the request's `model` to
`resolve`. With one model served any name is accepted (Open WebUI, Dify and RAGFlow send whatever the user typed;
infinity and TEI serve one model the same way); with several, a name no model answers to is an `UnknownModel`
naming the served ones (each by its configured name, its model id and its aliases) (gateway/api/errors.py gives it its status per dialect). Nothing here knows HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from gateway.errors import UnknownModel
from gateway.models import LoadedModels
from gateway.repository import ModelSpec

P = TypeVar("P")


@dataclass(frozen=True)
class ModelDescription:
    """What `/v1/models` says about a served model. `id` is the model's own id (the manifest's `model_id`);
    `max_tokens_per_pair` is the (query, document) pair length it scores (vLLM's `max_model_len`)."""

    id: str
    family: str | None = None
    max_tokens_per_pair: int | None = None
    default_instruction: str | None = None


Describe = Callable[[], ModelDescription]


@dataclass(frozen=True)
class ServedModel(Generic[P]):
    """One served model: the configured `name`, the `aliases` it also answers to, the pipeline that scores it,
    and how to describe it (by default by its name alone)."""

    name: str
    pipeline: P
    aliases: tuple[str, ...] = ()
    describe: Describe | None = None

    def description(self) -> ModelDescription:
        return self.describe() if self.describe is not None else ModelDescription(self.name)

    def listed_names(self) -> list[str]:
        """The names `/v1/models` lists for it: its id first, then its aliases."""
        own = self.description().id
        return [own, *dict.fromkeys(a for a in self.aliases if a != own)]

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases or name == self.description().id


@dataclass
class ServedModels(Generic[P]):
    """The served models in order; the first is the default. Names and aliases are unique across models."""

    models: Sequence[ServedModel[P]]
    created: int = field(default_factory=lambda: int(time.time()))  # the `created` of every model card

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        if not self.models:
            raise ValueError("at least one model must be served")
        seen: dict[str, str] = {}
        for model in self.models:
            for name in dict.fromkeys((model.name, *model.aliases)):
                if name in seen:
                    raise ValueError(f"the name {name!r} is given to both {seen[name]!r} and {model.name!r}")
                seen[name] = model.name

    @property
    def default(self) -> ServedModel[P]:
        return self.models[0]

    def __iter__(self) -> Iterator[ServedModel[P]]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def resolve(self, name: str | None) -> ServedModel[P]:
        """The model a request names: no name (or an empty one) is the default; with one model served any
        name is that model; with several, a name no model answers to raises UnknownModel."""
        if name is None or not name.strip() or len(self.models) == 1:
            return self.default
        for model in self.models:
            if model.answers_to(name):
                return model
        served = "; ".join(", ".join(dict.fromkeys((m.name, *m.listed_names()))) for m in self.models)
        raise UnknownModel(f"the model {name!r} is not served here; served models: {served}", name=name)


class HoldsModels(Protocol):
    """A pipeline that may have loaded its models (gateway.pipeline.Reranker)."""

    @property
    def models(self) -> LoadedModels | None: ...


def describe_pipeline(
    pipeline: HoldsModels,
    spec: ModelSpec | None,
    folder: str,
    *,
    family: str | None = None,
    default_instruction: str | None = None,
) -> Describe:
    """A description of a pipeline's cross-encoder: the loaded model's id and pair length (remembered), else
    the manifest's (`spec`, read at start-up by the composition root), else the folder's name."""
    known: list[ModelDescription] = []

    def describe() -> ModelDescription:
        if known:
            return known[0]
        models = pipeline.models
        if models is not None:
            stage = models.reranker
            known.append(ModelDescription(stage.spec.model_id, family, stage.max_length, default_instruction))
            return known[0]
        if spec is not None:
            return ModelDescription(spec.model_id, family, spec.max_length, default_instruction)
        return ModelDescription(folder, family, None, default_instruction)

    return describe
