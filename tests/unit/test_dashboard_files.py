"""The dashboard's shipped files: the country codes it maps regions with still match
pycountry, every country of the map has a code, and every file a page loads exists."""

from __future__ import annotations

import json
import re

import pycountry

from federation.api.ui import FILES


def test_country_codes_match_pycountry() -> None:
    shipped = json.loads(FILES["countries.json"][0])
    expected = {c.alpha_2: {"numeric": c.numeric, "name": c.name} for c in pycountry.countries}
    assert shipped == expected


def test_every_country_on_the_map_but_three_unrecognised_ones_has_a_code() -> None:
    numeric = {c["numeric"] for c in json.loads(FILES["countries.json"][0]).values()}
    topology = json.loads(FILES["vendor/countries-110m.json"][0])
    shapes = topology["objects"]["countries"]["geometries"]
    missing = sorted(s["properties"]["name"] for s in shapes if s.get("id") not in numeric)
    assert missing == ["Kosovo", "N. Cyprus", "Somaliland"]


def test_every_file_a_page_or_module_loads_is_shipped() -> None:
    for name, (body, kind) in FILES.items():
        if not (kind.startswith(("text/html", "text/javascript"))) or name.startswith("vendor/"):
            continue
        text = body.decode()
        folder = name.rpartition("/")[0]
        for ref in re.findall(r'(?:src|href)="([^"]+)"|from "(\.[^"]+)"', text):
            target = ref[0] or ref[1]
            if target.startswith(("/", "#", "http")):
                continue
            parts = [*folder.split("/"), *target.split("/")] if folder else target.split("/")
            path: list[str] = []
            for part in parts:
                if part == "..":
                    path.pop()
                elif part not in ("", "."):
                    path.append(part)
            assert "/".join(path) in FILES, f"{name} loads {target}, which is not shipped"


def test_each_vendored_package_ships_its_licence() -> None:
    for package in ("d3-array", "d3-geo", "topojson-client", "world-atlas"):
        assert b"Permission to use" in FILES[f"vendor/LICENSE.{package}.txt"][0]
