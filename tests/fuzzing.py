"""Hypothesis strategies that mutate a valid recipe text: values, keys, lines, indentation, inserted text.

Shared by the recipe-loader fuzz tests and the CLI fuzz tests.
"""
from hypothesis import strategies as st

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["0.5", "-0", ".nan", "1e309", "[]", "{}", "[0.1, 2]", "{a: 1}",
                                           "!!binary aGVsbG8=", "&a 1", "*a", "'", '"', "- x", "|", ">", "~",
                                           "0x1F", "1_000", "yes", "l2_norm", "features.0", "\t0.5",
                                           "os:system", "evil.py:build", "builtins:exec", "0-999999999999",
                                           "[[1, 3, 99999, 99999]]", "input_ids=1,16:long"]))


def render(value) -> str:
    return value if isinstance(value, str) else repr(value)


def set_value(lines, index, value):
    line = lines[index]
    key, sep, _ = line.partition(":")
    lines[index] = f"{key}{sep} {render(value)}" if sep else render(value)
    return lines


def mutations(text: str):
    """One edit of ``text``: (operation, where, argument)."""
    n = len(text.splitlines())
    return st.one_of(
        st.tuples(st.just("value"), st.integers(0, n - 1), scalars),
        st.tuples(st.just("key"), st.integers(0, n - 1), st.text(max_size=10)),
        st.tuples(st.just("delete"), st.integers(0, n - 1), st.none()),
        st.tuples(st.just("duplicate"), st.integers(0, n - 1), st.none()),
        st.tuples(st.just("indent"), st.integers(0, n - 1), st.integers(-4, 4)),
        st.tuples(st.just("insert"), st.integers(0, len(text)), st.text(max_size=8)),
    )


def mutate(text: str, ops) -> str:
    lines = text.splitlines()
    for op, where, arg in ops:
        where = min(where, len(lines) - 1) if lines else 0
        if not lines:
            break
        if op == "value":
            lines = set_value(lines, where, arg)
        elif op == "key":
            _, sep, rest = lines[where].partition(":")
            indent = len(lines[where]) - len(lines[where].lstrip())
            lines[where] = " " * indent + arg + (sep + rest if sep else ":")
        elif op == "delete":
            del lines[where]
        elif op == "duplicate":
            lines.insert(where, lines[where])
        elif op == "indent":
            lines[where] = (" " * arg + lines[where]) if arg > 0 else lines[where][-arg:]
        elif op == "insert":
            joined = "\n".join(lines)
            at = min(where, len(joined))
            text = joined[:at] + arg + joined[at:]
            lines = text.split("\n")
    return "\n".join(lines) + "\n"
