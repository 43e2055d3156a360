"""Checks a Helm chart without helm: Chart.yaml and values.yaml must be
valid YAML with the expected keys, and every template must be valid YAML
once its {{ ... }} actions are replaced by placeholders (whole-line actions
are dropped, inline ones become a scalar). Catches indentation and syntax
mistakes; it does not evaluate the templates.

The values are documented: every key of values.yaml, at every depth, has a
comment (on the lines right above it or at the end of its line), and every
leaf (a key whose value is not a non-empty mapping) is named, as its full
dotted path in backticks, in the first column of the table under
"## Helm values" in README (by default the README.md next to the chart);
every path that table names, and every .Values path a template uses,
exists in values.yaml.

Usage: check_helm_chart.py CHART_DIR [README]"""

import pathlib
import re
import sys

import yaml

ACTION = re.compile(r"\{\{-?.*?-?\}\}")


def flatten(text: str) -> str:
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if ACTION.fullmatch(stripped):
            continue  # control lines ({{- if }}, {{- include ... | nindent }})
        out.append(ACTION.sub("PLACEHOLDER", line))
    return "\n".join(out) + "\n"


def keys(node: yaml.MappingNode, path: tuple = ()):
    """(dotted path, key node, value node) of every key, depth first."""
    for k, v in node.value:
        p = path + (k.value,)
        yield ".".join(p), k, v
        if isinstance(v, yaml.MappingNode):
            yield from keys(v, p)


def is_leaf(v: yaml.Node) -> bool:
    return not (isinstance(v, yaml.MappingNode) and v.value)


def has_comment(lines: list, k: yaml.Node, v: yaml.Node) -> bool:
    above = lines[k.start_mark.line - 1].strip() if k.start_mark.line > 0 else ""
    if above.startswith("#"):
        return True
    # A trailing comment after a value that ends on the key's line.
    if v.end_mark.line == k.start_mark.line:
        return re.match(r"\s+#", lines[k.start_mark.line][v.end_mark.column :]) is not None
    return False


def documented_paths(readme: str) -> set:
    """Backticked names in the first column of the Helm values table."""
    section = re.search(r"^## Helm values\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README has no '## Helm values' section"
    names = set()
    for line in section.group(1).splitlines():
        if not line.startswith("|"):
            continue
        first = line.strip("|").split("|")[0]
        names.update(re.findall(r"`([^`]+)`", first))
    assert names, "the Helm values table names no value"
    return names


def check_values_documented(values_text: str, readme: str, templates: dict) -> None:
    root = yaml.compose(values_text)
    assert isinstance(root, yaml.MappingNode), "values.yaml is not a mapping"
    lines = values_text.splitlines()
    documented = documented_paths(readme)
    all_paths = set()
    problems = []
    for path, k, v in keys(root):
        all_paths.add(path)
        if not has_comment(lines, k, v):
            problems.append(f"values.yaml:{k.start_mark.line + 1}: {path} has no comment")
        if is_leaf(v) and path not in documented:
            problems.append(f"{path} is not in the README's Helm values table")
    for name in sorted(documented - all_paths):
        problems.append(f"the README's Helm values table names `{name}`, which values.yaml lacks")
    for tpl, text in sorted(templates.items()):
        for name in sorted(set(re.findall(r"\.Values\.([A-Za-z0-9_.]*[A-Za-z0-9_])", text))):
            if name not in all_paths:
                problems.append(f"{tpl} uses .Values.{name}, which values.yaml lacks")
    assert not problems, "values are not documented:\n" + "\n".join(problems)


def main() -> None:
    chart = pathlib.Path(sys.argv[1])
    readme = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else chart.parent / "README.md"
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    for key in ("apiVersion", "name", "version", "appVersion"):
        assert key in meta, f"Chart.yaml lacks {key}"
    values_text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    for key in ("replicas", "clusterID", "image", "config", "tls", "persistence"):
        assert key in values, f"values.yaml lacks {key}"
    templates = {t.name: t.read_text() for t in (chart / "templates").iterdir() if t.is_file()}
    check_values_documented(values_text, readme.read_text(), templates)
    kinds = set()
    for tpl in sorted((chart / "templates").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(flatten(tpl.read_text())) if d]
        assert docs, f"{tpl.name}: no document"
        for d in docs:
            assert "apiVersion" in d and "kind" in d and "metadata" in d, f"{tpl.name}: not a Kubernetes object"
            kinds.add(d["kind"])
    for kind in ("StatefulSet", "Service", "ConfigMap"):
        assert kind in kinds, f"the chart has no {kind}"
    print("chart ok:", ", ".join(sorted(kinds)))


if __name__ == "__main__":
    main()
