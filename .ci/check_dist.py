"""Check the built wheel and sdist in dist/ (run by `make dist` after `twine check`).

Both archives carry the Apache-2.0 LICENSE; the sdist carries the CHANGELOG and every image the
README links to by a relative path; the wheel's metadata has the provider's classifiers, license
expression and entry point, and ships the package with py.typed and without tests.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_CLASSIFIERS = {"Framework :: Apache Airflow", "Framework :: Apache Airflow :: Provider"}


def main(dist: Path) -> list[str]:
    problems: list[str] = []
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    license_text = (ROOT / "LICENSE").read_bytes()

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licenses = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/licenses/LICENSE", n)]
        if not licenses or archive.read(licenses[0]) != license_text:
            problems.append(f"{wheel.name}: no .dist-info/licenses/LICENSE equal to ./LICENSE")
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(archive.read(metadata_name).decode())
        missing = REQUIRED_CLASSIFIERS - set(metadata.get_all("Classifier") or [])
        if missing:
            problems.append(f"{wheel.name}: classifiers missing: {sorted(missing)}")
        if metadata["License-Expression"] != "Apache-2.0":
            problems.append(f"{wheel.name}: License-Expression is {metadata['License-Expression']!r}")
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        if "[apache_airflow_provider]" not in archive.read(entry_points).decode():
            problems.append(f"{wheel.name}: no apache_airflow_provider entry point")
        if "famulor_provider/py.typed" not in names:
            problems.append(f"{wheel.name}: no famulor_provider/py.typed")
        if [n for n in names if n.startswith("tests/")]:
            problems.append(f"{wheel.name}: ships tests/")

    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz")
        members = {m.name.removeprefix(f"{top}/") for m in archive.getmembers()}
        license_member = archive.extractfile(f"{top}/LICENSE") if "LICENSE" in members else None
        if license_member is None or license_member.read() != license_text:
            problems.append(f"{sdist.name}: no LICENSE equal to ./LICENSE")
        images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
        wanted = ["CHANGELOG.md", *(i for i in images if not re.match(r"[a-z]+://", i))]
        problems += [f"{sdist.name}: {name} missing" for name in wanted if name not in members]

    return problems


if __name__ == "__main__":
    found = main(Path(sys.argv[1] if len(sys.argv) > 1 else "dist"))
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        sys.exit(1)
    print("dist: LICENSE in wheel and sdist; classifiers, license expression, entry point, py.typed ok")
