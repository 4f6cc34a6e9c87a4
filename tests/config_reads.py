"""Which config fields package code really reads: typed attribute access found by walking the source's AST.

Not a test module: `tests/test_config.py` uses it to check that every field of `RunConfig` is read.

The rule. A read of field ``f`` of config class ``S`` (``TrainConfig``, ``SparqlConfig``, ``RoundConfig``, …) is
an attribute load ``E.f`` (or ``getattr(E, "f")``) where the expression ``E`` is known to hold an ``S``:

* ``E.section`` where ``E`` holds the config class that has the field ``section`` of type ``S`` — so
  ``config.train.seed`` reads ``TrainConfig.seed`` only, never ``ProbeConfig.seed``;
* ``E[i]`` / a ``for`` (or comprehension, ``enumerate``, ``zip``) target over ``E`` holding ``list[S]``
  (``config.rounds``);
* a name annotated ``S`` (parameter, ``x: S = …``), or assigned from an expression that holds an ``S``;
* an unannotated parameter that package code passes an ``S`` (``load_configured_model(config.model)``
  makes ``settings`` a ``ModelConfig`` inside it), when the function's name is defined once in the package;
* ``self.attr`` / ``obj.attr`` where the class (of ``self``, or ``obj``'s annotated class) declares
  ``attr: S`` in its body or sets ``self.attr = param`` from a parameter annotated ``S``;
* a call to a package function whose return annotation is ``S`` (``load_config(...)`` is a ``RunConfig``),
  to ``S(...)`` itself, or ``E.model_copy(...)``.

An attribute whose object's type cannot be told this way counts for nothing: the check errs towards
calling a field unread, never towards calling an unread one read. Dumping a whole section
(``model_dump``) is not a read of its fields.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from pydantic import BaseModel

from knowpack import config as config_module

MODELS: dict[str, type[BaseModel]] = {
    name: cls for name, cls in vars(config_module).items()
    if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == config_module.__name__
    and not name.startswith("_")}
SEQUENCES = {"list", "List", "Sequence", "Iterable", "Iterator", "tuple"}
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)

Type = tuple[str, str]  # ("one", class name) or ("list", class name of the items)


def field_type(cls: type[BaseModel], name: str) -> Type | None:
    """The type of a field that holds config models (``train``, ``sparql``, ``rounds``), else None."""
    annotation = cls.model_fields[name].annotation
    if annotation in MODELS.values():
        return ("one", annotation.__name__)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args and args[0] in MODELS.values():
        return ("list", args[0].__name__)
    return None


def all_fields(cls: type[BaseModel] = config_module.RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every field reachable from ``cls``: (dotted path, class name, field name)."""
    found = []
    for name in cls.model_fields:
        found.append((prefix + name, cls.__name__, name))
        nested = field_type(cls, name)
        if nested:
            found += all_fields(MODELS[nested[1]], f"{prefix}{name}.")
    return found


def _annotation(node: ast.expr | None) -> Type | None:
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _annotation(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        return ("one", node.id)
    if isinstance(node, ast.Attribute):
        return ("one", node.attr)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
        return _annotation(node.left) or _annotation(node.right)
    if isinstance(node, ast.Subscript):
        outer = _annotation(node.value)
        inner = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) else node.slice
        if outer and outer[1] in SEQUENCES:
            item = _annotation(inner)
            return ("list", item[1]) if item and item[0] == "one" else None
        if outer and outer[1] == "Optional":
            return _annotation(inner)
    return None


def _args(function) -> list[ast.arg]:
    a = function.args
    return [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs]


def _assignment(node) -> tuple[ast.expr | None, ast.expr | None, ast.expr | None]:
    """(target, value, annotation) of an assignment-like node, else Nones."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return node.targets[0], node.value, None
    if isinstance(node, ast.AnnAssign):
        return node.target, node.value, node.annotation
    if isinstance(node, ast.NamedExpr):
        return node.target, node.value, None
    if isinstance(node, ast.withitem) and node.optional_vars is not None:
        return node.optional_vars, node.context_expr, None
    return None, None, None


def _own_nodes(node):
    """The nodes of one scope; nested functions and classes are yielded but not entered."""
    todo = list(ast.iter_child_nodes(node))
    while todo:
        sub = todo.pop(0)
        yield sub
        if not isinstance(sub, (*FUNCTIONS, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(sub))


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


class Reads:
    """``Reads(sources).fields``: the (class name, field name) pairs read in ``sources`` ({label: code})."""

    def __init__(self, sources: dict[str, str]):
        trees = [ast.parse(text, label) for label, text in sources.items()]
        self.returns: dict[str, Type | None] = {}  # function name -> its annotated return type
        self.attributes: dict[str, dict[str, Type]] = {}  # class name -> {attribute: type}
        self.defs: dict[str, list] = {}
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.defs.setdefault(node.name, []).append(node)
                    if node.returns is not None:
                        returned = _annotation(node.returns)
                        self.returns[node.name] = returned if self.returns.get(node.name, returned) == returned else None
                if isinstance(node, ast.ClassDef):
                    self._class_attributes(node)
        self.inferred: dict[tuple[ast.AST, str], Type] = {}  # (function, parameter) -> what callers pass
        while True:  # call sites type parameters, which type more call sites
            known, self.fields = dict(self.inferred), set()
            for tree in trees:
                self._scope(tree, {}, None)
            if self.inferred == known:
                break

    def _class_attributes(self, node: ast.ClassDef) -> None:
        attributes = self.attributes.setdefault(node.name, {})
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                declared = _annotation(statement.annotation)
                if declared:
                    attributes[statement.target.id] = declared
        for method in node.body:
            if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = {a.arg: _annotation(a.annotation) for a in _args(method)}
            for sub in ast.walk(method):
                target, value, annotation = _assignment(sub)
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                    declared = _annotation(annotation) if annotation is not None else (
                        params.get(value.id) if isinstance(value, ast.Name) else None)
                    if declared:
                        attributes.setdefault(target.attr, declared)

    def _scope(self, node, outer: dict[str, Type | None], class_name: str | None) -> None:
        env = dict(outer)
        if isinstance(node, FUNCTIONS):
            for a in _args(node):
                env[a.arg] = _annotation(a.annotation) or self.inferred.get((node, a.arg))
            static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in getattr(node, "decorator_list", []))
            if class_name and _args(node) and not static:
                env[_args(node)[0].arg] = ("one", class_name)
        own = list(_own_nodes(node))
        for _ in range(3):  # a binding may use one made further down (loops)
            for sub in own:
                self._bind(sub, env)
        for sub in own:
            if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Load):
                self._read(self._type(sub.value, env), sub.attr)
            elif (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "getattr"
                  and len(sub.args) >= 2 and isinstance(sub.args[1], ast.Constant)):
                self._read(self._type(sub.args[0], env), sub.args[1].value)
            if isinstance(sub, ast.Call):
                self._infer(sub, env)
        for sub in own:
            if isinstance(sub, FUNCTIONS):
                self._scope(sub, env, None)
            elif isinstance(sub, ast.ClassDef):
                for statement in sub.body:
                    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self._scope(statement, env, sub.name)

    def _read(self, held: Type | None, attr: str) -> None:
        if held and held[0] == "one" and held[1] in MODELS and attr in MODELS[held[1]].model_fields:
            self.fields.add((held[1], attr))

    def _infer(self, call: ast.Call, env) -> None:
        defined = self.defs.get(_called_name(call), [])
        if len(defined) != 1:  # two functions of one name: which one is called cannot be told
            return
        function = defined[0]
        params = [*function.args.posonlyargs, *function.args.args]
        if isinstance(call.func, ast.Attribute) and params and params[0].arg in ("self", "cls"):
            params = params[1:]
        pairs = list(zip(params, call.args)) + [(p, k.value) for k in call.keywords for p in _args(function)
                                                if p.arg == k.arg]
        for param, arg in pairs:
            passed = self._type(arg, env)
            if passed and param.annotation is None:
                self.inferred.setdefault((function, param.arg), passed)

    def _bind(self, sub, env) -> None:
        target, value, annotation = _assignment(sub)
        if isinstance(target, ast.Name) and not env.get(target.id):
            env[target.id] = _annotation(annotation) if annotation is not None else self._type(value, env)
        if isinstance(sub, (ast.For, ast.AsyncFor, ast.comprehension)):
            iterated, bound = sub.iter, sub.target
            if (isinstance(iterated, ast.Call) and isinstance(iterated.func, ast.Name) and iterated.func.id == "enumerate"
                    and iterated.args and isinstance(bound, ast.Tuple) and len(bound.elts) == 2):
                iterated, bound = iterated.args[0], bound.elts[1]
            if (isinstance(iterated, ast.Call) and isinstance(iterated.func, ast.Name) and iterated.func.id == "zip"
                    and isinstance(bound, ast.Tuple) and len(bound.elts) == len(iterated.args)):
                pairs = list(zip(bound.elts, iterated.args))
            else:
                pairs = [(bound, iterated)]
            for name, source in pairs:
                held = self._type(source, env)
                if isinstance(name, ast.Name) and held and held[0] == "list" and not env.get(name.id):
                    env[name.id] = ("one", held[1])

    def _type(self, node, env) -> Type | None:
        """What ``node`` holds, where that can be told; None otherwise."""
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._type(node.value, env)
            if not base or base[0] != "one":
                return None
            if base[1] in MODELS:
                model = MODELS[base[1]]
                return field_type(model, node.attr) if node.attr in model.model_fields else None
            return self.attributes.get(base[1], {}).get(node.attr)
        if isinstance(node, ast.Subscript):
            base = self._type(node.value, env)
            if base and base[0] == "list":
                return base if isinstance(node.slice, ast.Slice) else ("one", base[1])
            return None
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "model_copy":
                return self._type(node.func.value, env)
            name = _called_name(node)
            return ("one", name) if name in MODELS else self.returns.get(name)
        return None


def package_sources() -> dict[str, str]:
    """The package's modules, config.py (which declares the fields) left out."""
    import knowpack

    root = Path(knowpack.__file__).parent
    return {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))
            if p.name != "config.py"}
