"""The editor's template browser over HTTP: this project's templates, their workflow and thumbnail files, and the
`comfyui-workflow-templates` package filtered to templates whose every node type the engine has."""

from __future__ import annotations

import json

from graphengine.server.templates import OWN_TEMPLATES, TemplateLibrary, node_types

from .harness import async_test, serve
from .nodepack import make_registry

WEBP = (b"RIFF", b"WEBP")


def ui_graph(*types: str, subgraph: tuple[str, ...] = ()) -> dict:
    """A UI workflow with one node per type (and a subgraph instance holding `subgraph`'s types)."""
    nodes = [{"id": i + 1, "type": t, "inputs": [], "outputs": [], "widgets_values": []} for i, t in enumerate(types)]
    definitions = {}
    if subgraph:
        nodes.append({"id": 99, "type": "5b7e6c1a-sub", "inputs": [], "outputs": []})
        definitions = {"subgraphs": [{"id": "5b7e6c1a-sub", "nodes": [{"id": 1, "type": t} for t in subgraph]}]}
    return {"nodes": nodes, "links": [], "version": 0.4, "definitions": definitions}


def fake_templates_package(root):
    """`comfyui_workflow_templates` in the package's layout: the module with a `templates/` folder holding
    index.json, `<name>.json` and `<name>-1.webp`."""
    package = root / "comfyui_workflow_templates"
    folder = package / "templates"
    folder.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    graphs = {
        "runs_here": ui_graph("Number", "Show", "Note", subgraph=("Number",)),
        "other_family": ui_graph("Number", "ModelSamplingAuraFlow"),
        "hidden_in_subgraph": ui_graph("Show", subgraph=("EmptySD3LatentImage",)),
    }
    for name, graph in graphs.items():
        (folder / f"{name}.json").write_text(json.dumps(graph))
        (folder / f"{name}-1.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    index = [{"moduleName": "default", "title": "Getting Started", "type": "image",
              "templates": [{"name": n, "description": n, "mediaType": "image", "mediaSubtype": "webp"}
                            for n in graphs]},
             {"moduleName": "default", "title": "Video", "type": "video",
              "templates": [{"name": "other_family", "description": "x", "mediaType": "video",
                             "mediaSubtype": "webp"}]}]
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def test_node_types_see_inside_subgraphs_and_skip_frontend_only_nodes():
    assert node_types(ui_graph("Number", "Note", "Reroute", subgraph=("KSampler",))) == {"Number", "KSampler"}


@async_test
async def test_index_lists_the_project_templates_and_serves_their_files(tmp_path):
    async with serve(tmp_path) as srv:
        response = await srv.client.get("/templates/index.json")
        assert response.status == 200
        index = await response.json()
        titles = [c["title"] for c in index]
        assert titles[:4] == ["Basics", "Inpaint", "Depth", "LoRA"]
        names = [t["name"] for c in index for t in c["templates"]]
        assert "graphengine_txt2img" in names and len(names) == len(set(names))
        for template in (t for c in index for t in c["templates"]):
            assert template["description"] and template["mediaSubtype"] == "webp"
            workflow = await (await srv.client.get(f"/templates/{template['name']}.json")).json()
            assert {"CheckpointLoaderSimple", "KSampler", "SaveImage"} <= {n["type"] for n in workflow["nodes"]}
            thumbnail = await srv.client.get(f"/templates/{template['name']}-1.webp")
            body = await thumbnail.read()
            assert thumbnail.status == 200 and (body[:4], body[8:12]) == WEBP
        # a locale's index is the same list; the logo index is empty
        assert await (await srv.client.get("/templates/index.fr.json")).json() == index
        assert await (await srv.client.get("/templates/index_logo.json")).json() == {}
        for bad in ("nope.json", "graphengine_txt2img-1.png", "index.schema.json", "..%2Fserver.py"):
            response = await srv.client.get(f"/templates/{bad}")
            assert response.status in (400, 403, 404), bad
            assert "error" in await response.json()


@async_test
async def test_installed_templates_package_is_offered_only_where_every_node_exists(tmp_path, monkeypatch):
    fake_templates_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    async with serve(tmp_path) as srv:
        index = await (await srv.client.get("/templates/index.json")).json()
        offered = {c["title"]: [t["name"] for t in c["templates"]] for c in index}
        assert offered["Getting Started"] == ["runs_here"]
        assert "Video" not in offered  # its only template was filtered out: no empty category
        assert offered["Basics"][0] == "graphengine_txt2img"  # the project's own come first
        assert (await srv.client.get("/templates/runs_here.json")).status == 200
        assert (await srv.client.get("/templates/runs_here-1.webp")).status == 200
        for hidden in ("other_family.json", "other_family-1.webp", "hidden_in_subgraph.json"):
            assert (await srv.client.get(f"/templates/{hidden}")).status == 404, hidden


def test_every_template_has_a_thumbnail():
    names = [t["name"] for c in json.loads((OWN_TEMPLATES / "index.json").read_text()) for t in c["templates"]]
    assert all((OWN_TEMPLATES / f"{name}-1.webp").is_file() for name in names)


def test_library_without_packages_serves_only_its_own(tmp_path):
    library = TemplateLibrary(make_registry(tmp_path), packages=[])
    assert library.file("graphengine_txt2img.json") == (OWN_TEMPLATES / "graphengine_txt2img.json").resolve()
    assert library.file("runs_here.json") is None
