"""Checks a Helm chart without helm: Chart.yaml and values.yaml must be
valid YAML with the expected keys, and every template must be valid YAML
once its {{ ... }} actions are replaced by placeholders (whole-line actions
are dropped, inline ones become a scalar). Catches indentation and syntax
mistakes; it does not evaluate the templates.

Usage: check_helm_chart.py CHART_DIR"""

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


def main() -> None:
    chart = pathlib.Path(sys.argv[1])
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    for key in ("apiVersion", "name", "version", "appVersion"):
        assert key in meta, f"Chart.yaml lacks {key}"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    for key in ("replicas", "clusterID", "image", "config", "tls", "persistence"):
        assert key in values, f"values.yaml lacks {key}"
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
