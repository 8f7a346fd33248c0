"""Reading run configs as bounded data: ``yaml.safe_load`` with limits on size and aliases.

A YAML alias (``*a``) repeats an anchored node (``&a``) without copying it, so a file of a
few hundred bytes can describe billions of values ("billion laughs"), and ``&a [*a]``
describes a list that contains itself. :func:`read_yaml` refuses files over
:data:`MAX_YAML_BYTES` and documents that would expand to more than
:data:`MAX_YAML_NODES` values, counting the composed node graph with memoization (so the
count costs the size of the file, not of the expansion) before anything is constructed.
:func:`check_acyclic` refuses self-containing configs given as Python objects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import yaml

PathLike = Union[str, "os.PathLike[str]"]
#: Largest run config file read, in bytes (8 MiB).
MAX_YAML_BYTES = 8 * 2**20
#: Most values (scalars, lists, mappings, keys included) a config may expand to.
MAX_YAML_NODES = 1_000_000


def _expanded_size(root: yaml.Node, source: str, limit: int = MAX_YAML_NODES,
                   what: str = "a run config") -> int:
    """Values ``root`` expands to, aliases repeated; ValueError on a cycle or above
    ``limit``. Iterative, memoized by node identity."""
    size: Dict[int, int] = {}
    on_path = set()
    stack: List[tuple] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            kids = _children(node)
            size[nid] = 1 + sum(size[id(k)] for k in kids)
            if size[nid] > limit:
                raise ValueError(f"{source}: the YAML expands to more than {limit:,} "
                                 f"values through its aliases (&anchor / *alias); {what} "
                                 "must be smaller")
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise ValueError(f"{source}: a YAML alias refers to a node that contains it "
                             f"(&anchor ... *anchor inside itself); {what} cannot be "
                             "recursive")
        on_path.add(nid)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in on_path:
                raise ValueError(f"{source}: a YAML alias refers to a node that contains "
                                 f"it (&anchor ... *anchor inside itself); {what} "
                                 "cannot be recursive")
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)]


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def read_yaml(path: PathLike) -> Any:
    """Parse a run config file with ``yaml.safe_load``'s loader, within bounds.

    Parameters
    ----------
    path : str or os.PathLike
        The YAML file (at most :data:`MAX_YAML_BYTES` bytes, UTF-8).

    Returns
    -------
    Any
        The document (None for an empty file).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        On a YAML syntax error (naming the file and line), a file that is too large, is
        not UTF-8, nests too deeply, contains itself through an alias, or expands to
        more than :data:`MAX_YAML_NODES` values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run config not found: '{path}'")
    n = path.stat().st_size
    if n > MAX_YAML_BYTES:
        raise ValueError(f"{path}: the run config is {n:,} bytes; at most {MAX_YAML_BYTES:,} "
                         "(8 MiB) are read (list many stimuli in a .stim.csv file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, source: str, limit: int = MAX_YAML_NODES,
                   what: str = "a run config") -> Any:
    """``yaml.safe_load(text)`` within bounds (at most ``limit`` values once aliases are
    expanded, no recursion); ValueError starting with ``source`` otherwise."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source, limit, what)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ValueError(f"{source}: the YAML nests too deeply to be {what}") from None
    finally:
        loader.dispose()


def check_acyclic(value: Any, source: str) -> None:
    """ValueError if ``value`` (a config as Python lists and mappings) contains itself;
    shared (non-recursive) references are fine."""
    done = set()
    on_path = set()
    stack: List[tuple] = [(value, False)]
    while stack:
        obj, leaving = stack.pop()
        if leaving:
            on_path.discard(id(obj))
            done.add(id(obj))
            continue
        if not isinstance(obj, (list, tuple, Mapping)) or id(obj) in done:
            continue
        if id(obj) in on_path:
            raise ValueError(f"{source}: the run config contains itself (a list or mapping "
                             "inside itself); a config must be a tree of plain data")
        on_path.add(id(obj))
        stack.append((obj, True))
        kids = list(obj.keys()) + list(obj.values()) if isinstance(obj, Mapping) else obj
        stack.extend((k, False) for k in kids)
