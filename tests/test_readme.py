"""README's install and test commands are exactly what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"## {section}.*?```bash\n(.*?)```", text, re.DOTALL)
    assert m, f"no bash block under '## {section}'"
    return m.group(1).strip()


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = _block("Install")
    assert len(install.splitlines()) == 1 and install in ci
    assert _block("Test") in ci
