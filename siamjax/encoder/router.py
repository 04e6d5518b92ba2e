"""sentence-transformers `Router` models: asymmetric query/document towers on one shared trunk.

A Router folder (sentence-transformers 5/6) says which modules each route (task) applies:
`router_config.json` = {"types": module id -> class, "structure": route -> [module ids],
"parameters": {default_route, allow_empty_key, route_mappings}}, each module saved in the
folder `<id>`. A module used by several routes is listed under several routes with one id, so
its weights are shared; modules listed in `modules.json` before or after the Router belong to
every route.

siamjax reads Routers whose routes share one Transformer (the trunk) and may differ after it:
each route is Transformer, Pooling, Dense*, [Normalize]. Why only a shared trunk: the trunk is
the cost. The params stay one pytree (`{"encoder": trunk, "dense": {module id: ...}}`), the
trunk encodes all S sides of a training batch in one vmapped call exactly as a plain model
does, and only the cheap route heads (pooling, a Dense per route, ...) differ per side.
Routes with separate transformers would be two models in one folder; they are refused.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from siamjax.encoder import folder as st_folder
from siamjax.encoder import hf_names
from siamjax.encoder.families import TransformerConfig
from siamjax.encoder.model import DenseConfig, EncodeFn, sentence_head
from siamjax.encoder.pooling import PoolingConfig

MODULE_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")
_ROUTER_KINDS = ("Router", "Asym")  # Asym: the class's name before sentence-transformers 5
_WRITE_TYPE = "sentence_transformers.models.{}"
CONFIG_FILE = "router_config.json"
# The modality of every text input (sentence-transformers infers "text" for strings).
_TEXT = "text"

Head = PoolingConfig | DenseConfig | str  # a routed module's config; "Normalize" for Normalize


@dataclasses.dataclass(frozen=True)
class RouterSpec:
    """A Router model's structure: the shared trunk and, per route, the modules after it.

    `modules` maps every module id except the trunk's to its config (PoolingConfig, DenseConfig
    or "Normalize"); `routes` maps each route to its module ids, trunk first (modules outside the
    Router included); `layout` is the top-level `modules.json` order, "" standing for the Router.
    `default_route`, `allow_empty_key` and `route_mappings` are sentence-transformers' parameters
    (route_mappings: ((task, modality), route) pairs).
    """

    transformer: TransformerConfig
    trunk_id: str
    modules: tuple[tuple[str, Head], ...]
    routes: tuple[tuple[str, tuple[str, ...]], ...]
    layout: tuple[str, ...] = ("",)
    default_route: str | None = None
    allow_empty_key: bool = True
    route_mappings: tuple[tuple[tuple[str | None, Any], str], ...] = ()

    def __post_init__(self):
        if not self.routes:
            raise ValueError("the Router has no routes")
        if self.default_route is None and self.allow_empty_key:  # sentence-transformers' rule
            object.__setattr__(self, "default_route", self.routes[0][0])
        names = self.route_names
        for route in [self.default_route] * (self.default_route is not None) + [r for _, r in self.route_mappings]:
            if route not in names:
                raise ValueError(f"route {route!r} (default_route / route_mappings) is not one of the routes {names}")
        dims = {route: self._route_dim(route) for route in names}
        if len(set(dims.values())) > 1:
            raise ValueError(f"routes give embeddings of different widths {dims}; siamjax compares every route's "
                             "embeddings with every other's, so all routes must end at one width")

    @property
    def route_names(self) -> list[str]:
        return [name for name, _ in self.routes]

    def head(self, route: str) -> tuple[PoolingConfig, list[tuple[str, DenseConfig]], bool]:
        """(pooling, [(Dense id, config)], normalize) applied by `route` after the trunk."""
        ids = dict(self.routes)[route]
        modules = dict(self.modules)
        return (modules[ids[1]], [(i, modules[i]) for i in ids[2:] if isinstance(modules[i], DenseConfig)],
                modules[ids[-1]] == "Normalize")

    def dense_modules(self) -> dict[str, DenseConfig]:
        """Every Dense module of any route, by id (shared ones once)."""
        return {i: m for i, m in self.modules if isinstance(m, DenseConfig)}

    @property
    def embedding_dim(self) -> int:
        return self._route_dim(self.routes[0][0])

    def _route_dim(self, route: str) -> int:
        pooling, dense, _ = self.head(route)
        return dense[-1][1].out_features if dense else pooling.output_dim(self.transformer.hidden_size)

    def resolve(self, task: str | None) -> str:
        """The route a text input of `task` takes (None: no task), as sentence-transformers'
        `Router._resolve_route` picks it: route_mappings (exact, task-only, modality-only,
        catch-all), then a route named like the task, then `default_route`."""
        mappings = dict(self.route_mappings)
        for key in ((task, _TEXT), (task, None), (None, _TEXT), (None, None)):
            if key in mappings:
                return mappings[key]
        names = self.route_names
        if task and task in names:
            return task
        if _TEXT in names:
            return _TEXT
        if task is not None:
            raise ValueError(f"no route for task {task!r}; the routes are {names}")
        if self.default_route is None:
            raise ValueError(f"no task given and the Router has no default_route; pass one of the routes {names}")
        return self.default_route


def check_routes(transformer: TransformerConfig, trunk_id: str, modules: dict[str, Head],
                 routes: dict[str, tuple[str, ...]]) -> None:
    """Each route must be the shared trunk, Pooling, Dense*, [Normalize], widths chained."""
    for route, ids in routes.items():
        kinds = [_kind_of(modules.get(i, "Transformer")) for i in ids]
        ok_order = (len(ids) >= 2 and kinds[:2] == ["Transformer", "Pooling"]
                    and all(k == "Dense" for k in kinds[2:len(kinds) - (kinds[-1] == "Normalize")]))
        if not ok_order:
            raise ValueError(f"route {route!r} applies {kinds}; siamjax supports routes of a Transformer, a Pooling, "
                             "any Dense modules and an optional Normalize")
        if ids[0] != trunk_id:
            raise ValueError(f"route {route!r} uses Transformer {ids[0]!r}, another route {trunk_id!r}: siamjax "
                             "supports Routers whose routes share one Transformer (only the modules after it differ)")
        width = modules[ids[1]].output_dim(transformer.hidden_size)
        for i in ids[2:]:
            if isinstance(modules[i], DenseConfig):
                if modules[i].in_features != width:
                    raise ValueError(f"route {route!r}: Dense {i!r} has in_features {modules[i].in_features}, "
                                     f"but its input is {width} wide")
                width = modules[i].out_features


def _kind_of(module: Head) -> str:
    if isinstance(module, PoolingConfig):
        return "Pooling"
    if isinstance(module, DenseConfig):
        return "Dense"
    return module


# ----------------------------------------------------------------------------- model
class RouterModel(nnx.Module):
    """The shared trunk plus every route's Dense modules; `__call__` encodes through one route."""

    def __init__(self, spec: RouterSpec, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, attention: str = "xla", rngs: nnx.Rngs):
        self.encoder = spec.transformer.build(dtype=dtype, param_dtype=param_dtype, remat=remat,
                                              attention=attention, rngs=rngs)
        self.dense = nnx.Dict({i: nnx.Linear(d.in_features, d.out_features, use_bias=d.bias,
                                             param_dtype=param_dtype, rngs=rngs)
                               for i, d in spec.dense_modules().items()})
        self.spec = spec

    def head(self, route: str, h_RxLxD, attention_mask, text_index=None):
        """Route `route`'s pooling, Dense modules and normalisation on the trunk's token states."""
        pooling, dense, normalize = self.spec.head(route)
        return sentence_head(h_RxLxD, attention_mask, text_index, pooling,
                             [(cfg, self.dense[i]) for i, cfg in dense], normalize)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, text_index=None, rng=None,
                 route: str):
        h_RxLxD = self.encoder(input_ids, attention_mask, token_type_ids, rng=rng)
        return self.head(route, h_RxLxD, attention_mask, text_index)


def abstract_params(spec: RouterSpec, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                    remat: bool = False, attention: str = "xla"):
    """`(graphdef, params)` of a RouterModel, params as `jax.ShapeDtypeStruct`s."""
    model = nnx.eval_shape(lambda: RouterModel(spec, dtype=dtype, param_dtype=param_dtype, remat=remat,
                                               attention=attention, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def init_params(spec: RouterSpec, *, seed: int = 0, param_dtype: Any = jnp.float32):
    """Randomly initialised `(graphdef, params)` (tests)."""
    graphdef, state = nnx.split(RouterModel(spec, param_dtype=param_dtype, rngs=nnx.Rngs(seed)))
    return graphdef, nnx.to_pure_dict(state)


def make_route_encode_fn(graphdef: nnx.GraphDef, route: str) -> EncodeFn:
    """The pure encoder of one route: `encode_fn(params, batch, *, rng=None) -> [B, D]`."""

    def encode_fn(params, batch, *, rng=None):
        model = nnx.merge(graphdef, params)
        return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                     text_index=batch.get("text_index"), rng=rng, route=route)

    return encode_fn


class SideRoutedEncode:
    """The encode function of a Router model: side s of a batch takes route `side_routes[s]`.

    Called on one batch it encodes through `default_route` (a plain `EncodeFn`, e.g. for
    mining); on the S stacked sides (`encode_sides`, what the train step and GradCache call)
    the trunk runs once, vmapped over the sides as for a plain model, then each side's head.
    """

    def __init__(self, graphdef: nnx.GraphDef, side_routes: tuple[str, ...], default_route: str | None):
        self.graphdef, self.side_routes, self.default_route = graphdef, tuple(side_routes), default_route

    def __call__(self, params, batch, *, rng=None):
        if self.default_route is None:
            raise ValueError("this Router has no default_route: encode through a route (task) explicitly")
        return make_route_encode_fn(self.graphdef, self.default_route)(params, batch, rng=rng)

    def encode_sides(self, params, sides: dict, rngs_S: jax.Array | None = None) -> jax.Array:
        num_sides = sides["input_ids"].shape[0]
        if num_sides != len(self.side_routes):
            raise ValueError(f"the batch has {num_sides} sides but routes were given for {len(self.side_routes)}: "
                             f"{self.side_routes}")
        graphdef = self.graphdef

        def trunk(side, key=None):
            model = nnx.merge(graphdef, params)
            return model.encoder(side["input_ids"], side["attention_mask"], side.get("token_type_ids"), rng=key)

        h_SxRxLxD = jax.vmap(trunk)(sides) if rngs_S is None else jax.vmap(trunk)(sides, rngs_S)
        model = nnx.merge(graphdef, params)
        text_index = sides.get("text_index")
        return jnp.stack([model.head(route, h_SxRxLxD[s], sides["attention_mask"][s],
                                     None if text_index is None else text_index[s])
                          for s, route in enumerate(self.side_routes)])


# ----------------------------------------------------------------------------- folders
@dataclasses.dataclass
class LoadedRouter:
    """What a Router folder holds, ready to build a RouterModel from."""

    spec: RouterSpec
    tensors: Mapping[str, np.ndarray]            # the trunk's weights (HF names, lazy)
    dense_tensors: dict[str, Mapping[str, np.ndarray]]  # Dense module id -> its weights
    dense_dirs: dict[str, pathlib.Path]
    hf_config: dict
    max_seq_length: int
    transformer_dir: pathlib.Path


def is_router_folder(folder: pathlib.Path) -> bool:
    """Whether `modules.json` holds a sentence-transformers Router (or its old name, Asym)."""
    path = folder / "modules.json"
    if not path.is_file():
        return False
    entries = st_folder.read_json(path)
    return isinstance(entries, list) and any(_type_name(e) in _ROUTER_KINDS for e in entries if isinstance(e, dict))


def _type_name(entry: dict) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def read_router_folder(folder: pathlib.Path) -> LoadedRouter:
    """Parse a Router folder (no model is built); every error names the file at fault."""
    entries = st_folder.read_json(folder / "modules.json")
    routers = [e for e in entries if _type_name(e) in _ROUTER_KINDS]
    if len(routers) != 1:
        raise ValueError(f"{folder / 'modules.json'}: {len(routers)} Router modules; siamjax supports one")
    router_dir = folder / routers[0].get("path", "")
    config_path = router_dir / CONFIG_FILE
    if not config_path.is_file() and (router_dir / "config.json").is_file():
        config_path = router_dir / "config.json"  # how the older Asym module saved it
    config = st_folder.read_json(config_path) if config_path.is_file() else None
    if not isinstance(config, dict) or not isinstance(config.get("types"), dict) \
            or not isinstance(config.get("structure"), dict):
        raise ValueError(f"{router_dir / CONFIG_FILE}: missing, or without 'types' and 'structure'")
    try:
        return _read_router(folder, entries, router_dir, config)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: {err}") from err


def _read_router(folder: pathlib.Path, entries: list, router_dir: pathlib.Path, config: dict) -> LoadedRouter:
    kinds, dirs = {}, {}
    for module_id, type_name in config["types"].items():
        if pathlib.PurePath(module_id).name != module_id or module_id in ("", ".", ".."):
            raise ValueError(f"module id {module_id!r} is not a folder name")
        kinds[module_id], dirs[module_id] = str(type_name).rsplit(".", 1)[-1], router_dir / module_id
    layout = []
    for i, entry in enumerate(entries):
        if _type_name(entry) in _ROUTER_KINDS:
            layout.append("")
            continue
        module_id = entry.get("path", "") or f"module_{i}"
        kinds[module_id], dirs[module_id] = _type_name(entry), folder / entry.get("path", "")
        layout.append(module_id)
    unknown = {i: k for i, k in kinds.items() if k not in MODULE_KINDS}
    if unknown:
        module_id, kind = next(iter(unknown.items()))
        raise ValueError(f"module {module_id!r} has type {kind!r}; siamjax supports {', '.join(MODULE_KINDS)} "
                         "in a Router")
    routes = {}
    for route, ids in config["structure"].items():
        missing = [i for i in ids if i not in kinds]
        if missing:
            raise ValueError(f"route {route!r} lists module(s) {missing} that 'types' does not define")
        routes[route] = tuple(x for top in layout for x in (ids if top == "" else [top]))
    trunks = {ids[0] for ids in routes.values() if ids and kinds[ids[0]] == "Transformer"}
    if not routes or not trunks:
        raise ValueError("no route starts with a Transformer")
    trunk_id = sorted(trunks)[0] if len(trunks) == 1 else next(iter(routes.values()))[0]
    transformer, tensors, hf_config, max_len = st_folder.read_transformer(dirs[trunk_id])
    modules, dense_tensors, dense_dirs = {}, {}, {}
    for module_id in dict.fromkeys(x for ids in routes.values() for x in ids):
        kind = kinds[module_id]
        if kind == "Pooling":
            modules[module_id] = st_folder.read_pooling(dirs[module_id])
        elif kind == "Dense":
            modules[module_id], dense_tensors[module_id] = st_folder.read_dense(dirs[module_id])
            dense_dirs[module_id] = dirs[module_id]
        elif kind == "Normalize":
            modules[module_id] = "Normalize"
    check_routes(transformer, trunk_id, modules, routes)
    params = dict(config.get("parameters") or {})
    mappings = tuple((_mapping_key(k), v) for k, v in (params.get("route_mappings") or {}).items())
    spec = RouterSpec(transformer=transformer, trunk_id=trunk_id, modules=tuple(modules.items()),
                      routes=tuple((r, ids) for r, ids in routes.items()), layout=tuple(layout),
                      default_route=params.get("default_route"), allow_empty_key=bool(params.get("allow_empty_key", True)),
                      route_mappings=mappings)
    return LoadedRouter(spec, tensors, dense_tensors, dense_dirs, hf_config, max_len, dirs[trunk_id])


def _mapping_key(text: str) -> tuple[str | None, Any]:
    """A route_mappings key as sentence-transformers writes it: "('query', 'text')"."""
    try:
        task, modality = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"route_mappings key {text!r} is not a (task, modality) pair") from None
    return task, tuple(sorted(modality)) if isinstance(modality, (tuple, list)) else modality


def fill_router_params(loaded: LoadedRouter, abstract: dict, place) -> tuple[dict, dict]:
    """`(params, extras)`: the trunk's and every Dense module's weights, each tensor checked and
    placed by `place(source)(name, value)` as it is read."""
    source = str(loaded.transformer_dir)
    params, extras = hf_names.fill_params(abstract, loaded.tensors, loaded.spec.transformer.tensor_names(), source,
                                          place=place(source))
    for module_id, dense in loaded.spec.dense_modules().items():
        where = str(loaded.dense_dirs[module_id])
        filled, _ = hf_names.fill_params(abstract, loaded.dense_tensors[module_id],
                                         hf_names.dense_names(dense.bias, module_id), where, place=place(where))
        params["dense"][module_id] = filled["dense"][module_id]
    return params, extras


def write_router_folder(directory: pathlib.Path, *, spec: RouterSpec, params: dict, tokenizer, hf_config: dict,
                        max_seq_length: int, extras: dict[str, np.ndarray], settings=None,
                        card: str | None = None) -> None:
    """Write a sentence-transformers Router folder with the loaded folder's module ids and layout
    (`settings`: the model's prompts etc.; `card`: a README.md model card, if given)."""
    directory.mkdir(parents=True, exist_ok=True)
    modules = dict(spec.modules)
    kinds = {spec.trunk_id: "Transformer", **{i: _kind_of(m) for i, m in modules.items()}}
    st_folder.write_transformer(directory / spec.trunk_id, transformer=spec.transformer, params=params,
                                tokenizer=tokenizer, hf_config=hf_config, max_seq_length=max_seq_length,
                                extras=extras)
    for module_id, module in modules.items():
        if isinstance(module, PoolingConfig):
            st_folder.write_pooling(directory / module_id, module, spec.transformer.hidden_size)
        elif isinstance(module, DenseConfig):
            st_folder.write_dense(directory / module_id, module, params, module_id)
        else:
            (directory / module_id).mkdir(exist_ok=True)
    outer = [i for i in spec.layout if i]
    structure = {route: [i for i in ids if i not in outer] for route, ids in spec.routes}
    routed = dict.fromkeys(i for ids in structure.values() for i in ids)
    (directory / CONFIG_FILE).write_text(json.dumps({
        "types": {i: _WRITE_TYPE.format(kinds[i]) for i in routed},
        "structure": structure,
        "parameters": {"default_route": spec.default_route, "allow_empty_key": spec.allow_empty_key,
                       "route_mappings": {str(k): v for k, v in spec.route_mappings}},
    }, indent=4))
    entries = [{"idx": n, "name": str(n), "path": i, "type": _WRITE_TYPE.format(kinds[i] if i else "Router")}
               for n, i in enumerate(spec.layout)]
    (directory / "modules.json").write_text(json.dumps(entries, indent=2))
    st_folder.write_model_config(directory, settings)
    if card is not None:
        (directory / "README.md").write_text(card)
