"""TEdBench, the Textual Editing Benchmark of Imagic (Kawar et al., CVPR 2023): 100 (image, target prompt) pairs.

Published layout (`root`, or the download cache): `input_list.json`, a list of
`{"img_name", "target_text"}`, and `originals/<img_name>`, 40 images. The images are mixed JPEG and
PNG, some RGBA, and `bird.png` is JPEG data identical to `bird.jpeg`; both stay, each has its own
prompts. Target prompts are kept verbatim (each ends with a period). TEdBench has no source prompts:
pass `source_prompts` (a JSON file mapping img_name to a prompt) for methods that need one.

Each entry is checked when its sample loads (`load`): a malformed entry, or one whose img_name
leads outside `originals/` (see `datasets/entries.py`), fails only its own sample.

Research-use data without a declared licence; cite Kawar et al. 2023.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from editsweep.datasets.base import Dataset, DatasetError, DatasetParams, Sample, register_dataset
from editsweep.datasets.entries import resolve_inside, validate_entry
from editsweep.datasets.images import load_rgb

COMMIT = "e711b1e515d4f1e297eecd031e55c4d0070cb41c"
BASE_URL = f"https://raw.githubusercontent.com/imagic-editing/imagic-editing.github.io/{COMMIT}/tedbench/"
INPUT_LIST = "input_list.json"
# sha256 of every published file at COMMIT, relative to the tedbench/ folder.
SHA256: dict[str, str] = {
    "input_list.json": "eb35aab9eb19b7926e1b9425d078be66a1696e583f0d5e2db6de66bcf7bc94d0",
    "originals/apples.jpeg": "1354f9409084edbfefe1e2da4fe5f2ea25dc6d756fb67bc52012bf10b79cf5a1",
    "originals/banana_1.jpeg": "8a43a41e58968c43a22be64e0c6bf484a97561047c08090e8bf81a45bf88c5d0",
    "originals/bear3.jpeg": "c9b8908c5b42a70a7c825f4f92646931cca392084e155a58c4284f4218d3b3ed",
    "originals/bird-g83440b9c4_1920.jpg": "6768242f9407dbb45e99665632f2ea45d08cb6baf3012cc964b772d2fa37b317",
    "originals/bird.jpeg": "88324f0f5990fb2943080b67168e9669a74cee9560b6db85467aab2e99ece51e",
    "originals/bird.png": "88324f0f5990fb2943080b67168e9669a74cee9560b6db85467aab2e99ece51e",
    "originals/black_shirt.jpeg": "01da1eee0700ca200f8c222ae32e5d6dc4edfc6e0ba765ee8bbd8973240f2cde",
    "originals/box.jpeg": "dec60ac41099e860905eeb623df0c2a48c5b999c42070b0e4047220fbdc0f32c",
    "originals/cake_1.jpeg": "a3783a3feb3310074957da51f5ea0c925bd4a8c09ae1cbbc8983b358afd724d0",
    "originals/cat.jpeg": "de13ccbb3998749949b2f35372ced57bbc21a01dc9404fd08d072d3d9873823e",
    "originals/cat_3.jpeg": "8cc88ca98e3a36740d76687cdc77bbd59224535c1fbd1538a236c2a28b0ca0b2",
    "originals/chair_1.jpeg": "67ffbb37161cd54dc93c79f2631487fa7680847b4ce7858d033c481e105c5dce",
    "originals/chibi.jpeg": "0950d9302abbce58763e8d982c263000a1daddf21f13cd22625aec80933de6f2",
    "originals/couple_beach.jpeg": "53b44b3d0fb189e46f24ca99ce8e11bb304652ddbfe6913292f0fcc780048cb7",
    "originals/dog2_standing.png": "366fdef649f68ccd5a23058633fc7be57ee78d02d6dc989eba53cd5b8d3258d2",
    "originals/dog_01.jpeg": "0e3b8fe9beb7642d760e662665541cda885f9bf6668961fcb941d07bfa05522b",
    "originals/dog_with_shirt.jpg": "21f5dd4fa27374c9c1ed28fd796e6030b2e355310ffa4c7456786a466b14b0e6",
    "originals/door.jpeg": "064dfba7c07731656cbbdac16c3c896afb6842ea239e149afcd2695186d68f39",
    "originals/drinking_horse.png": "a3bfcc0ea266030089eae745df77a960ede9fb81618be5a2c6e4b62356eb428b",
    "originals/egg_tree.jpeg": "552d4fb648525fe0c823183ee7b9cce887831a3531718186fac63ca3e8389088",
    "originals/elephant.jpeg": "6a5c3e1ac58004c1cd2295dbb384aebefad62804a4ab0893b458b8b788bf21b0",
    "originals/empty_street.jpeg": "e45c01e251cebd7f4cda0d25548c2a7ad66818ccc30eeedaacaf7a17e0b91653",
    "originals/flamingo.jpeg": "da8edd11534f9bf24f97fa23762b829832dc11d13c6759919f09e58024e290f1",
    "originals/giraffe.jpeg": "7f48ce8336f34551bf303bf504893f9f40e1d58b73ae8ddf85e9f19da5e4d54a",
    "originals/goat_and_cat.jpg": "3c85ecd06b06d6612bc2ee26599a7a6b47dd53f3ceae1d360cba748dcf1d1b79",
    "originals/milk_cookie.jpeg": "70ad6bec3ac64c6f0462e3b0d451d0047d18a5ee321b6cbfc9b1ff4cbd5d3e52",
    "originals/new_cat_3.jpeg": "4b08b129245f5080372e05ef806eea5bfd266083c0cfd3d04b61dc44ebb346fb",
    "originals/open_book.jpeg": "51a64e10a32d822e249830d5382641b3c9fe205fc594b6a1849dd178b6684715",
    "originals/pizza1.png": "4fbe0a8f8c3f2158b8ae182cc51f97e4c0f554237a225185c2d546992448210b",
    "originals/prague.png": "805f160e0dee93215ef83a15d8a1037fbc3cd92a39765ced0c629092da41203b",
    "originals/red_car.jpeg": "cda49c377f8bb100edcd45b5214b00b0d2488c7d89925f112865eee50a23b872",
    "originals/road1.png": "8bfbeb9348cd3e78763a34ffe631755d584cce3e921825ea0bcd4102a1841f30",
    "originals/teddy_1.jpeg": "f7958321df627db651ca6401559e2aab965bb43fcfed79963bb419793cdb7380",
    "originals/tennis_ball.jpeg": "a5a9cb0eedec5a1179bf8e7678ee959e114189af019ef03b9ee0b7f691b05cb7",
    "originals/tree_1.jpeg": "a9cc792538dd28327592b1ec3a205d99fb739172d9e184005d9d9f865a9a359c",
    "originals/two_dogs_with_checkered_shirts1.jpg": "c0b34adb5729ae94fa314d1576217d81274748e95d89bc8f10b55511501ea781",
    "originals/vase_01.jpeg": "6a330d998d867db520cf1cbbf84475d7f60e78cc00da20550723ed024328f725",
    "originals/white_horse1.png": "d6cc942b6f13c294a6924e87e2e03bbbfb567e0abdc1205d96ad23331ffb86fa",
    "originals/white_horse2.png": "a2594de3daa9cbed0af204719a7a6dc58f1089ce74a64ee19e28f35c4174b2b4",
    "originals/zebra.jpeg": "c252119474fd3f59c5d99f629cda74e245c98abafe3d2667134e8c0cad410f45",
}
_CHUNK = 1 << 20


class TEdBenchParams(DatasetParams):
    """Where the files are (`root`, or `download: true` into a cache), optional source prompts, a limit."""

    root: str | None = None
    download: bool = False
    # The folder to download into; default $EDITSWEEP_CACHE/tedbench, else ~/.cache/editsweep/tedbench.
    cache_dir: str | None = None
    base_url: str = BASE_URL
    source_prompts: str | None = None
    limit: int | None = Field(None, ge=1)


@register_dataset
class TEdBench(Dataset):
    """The 100 TEdBench pairs, in `input_list.json` order, with ids `{index:03d}-{img_name}`."""

    name = "tedbench"
    Params = TEdBenchParams
    params: TEdBenchParams

    def __init__(self, params: TEdBenchParams | dict[str, Any] | None = None) -> None:
        super().__init__(params)
        p = self.params
        if p.root is not None and p.download:
            raise DatasetError(
                "tedbench: pass either `root:` (a local copy) or `download: true` "
                "(with an optional `cache_dir:`), not both"
            )
        if p.root is None and not p.download:
            raise DatasetError(
                "tedbench needs its files: pass `root: <folder with input_list.json and originals/>` "
                "or `download: true` to fetch them into a cache"
            )
        if p.root is not None and not (Path(p.root).expanduser() / INPUT_LIST).is_file():
            raise DatasetError(
                f"tedbench root {p.root} has no {INPUT_LIST}: pass `root:` pointing at a folder in the "
                "published layout (input_list.json and originals/), or `download: true`"
            )

    @cached_property
    def root(self) -> Path:
        """The folder holding the files: `root`, or the cache after a verified download."""
        if self.params.root is not None:
            return Path(self.params.root).expanduser()
        return download(cache_dir(self.params.cache_dir), self.params.base_url)

    @cached_property
    def _entries(self) -> dict[str, tuple[int, Any]]:
        """Sample id -> (index, raw entry), in file order, at most `limit` of them.

        Entries are checked one by one in `load`, so one malformed entry fails only its own sample;
        a file that is not JSON or not a list fails the whole dataset here.
        """
        path = self.root / INPUT_LIST
        try:
            pairs = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {path}: {e}") from e
        if not isinstance(pairs, list):
            raise DatasetError(
                f"{path} must be a JSON list of {{'img_name': str, 'target_text': str}} objects, "
                f"got {type(pairs).__name__}"
            )
        return {sample_id(i, p): (i, p) for i, p in enumerate(pairs[: self.params.limit])}

    @cached_property
    def _source_prompts(self) -> dict[str, Any] | None:
        """img_name -> source prompt (unchecked: `load` checks the one it uses), or None when not given."""
        if self.params.source_prompts is None:
            return None
        path = Path(self.params.source_prompts).expanduser()
        try:
            prompts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read source prompts {path}: {e}") from e
        if not isinstance(prompts, dict):
            raise DatasetError(f"source prompts {path} must be a JSON object mapping img_name to a prompt string")
        return prompts

    def sample_ids(self) -> list[str]:
        """`{index:03d}-{img_name}` for each pair of `input_list.json`, in file order.

        Reads only `input_list.json` (and the source prompts file, so that a broken one fails planning).
        """
        self._source_prompts  # noqa: B018 - read now: a broken file is a planning error, not 100 sample errors
        return list(self._entries)

    def load(self, sample_id: str) -> Sample:
        """The image `originals/<img_name>` as RGB with its target prompt (and source prompt if given).

        Raises `DatasetError` naming the entry when it is malformed or names a file outside `originals/`.
        """
        try:
            index, raw = self._entries[sample_id]
        except KeyError:
            raise DatasetError(f"unknown tedbench sample id {sample_id!r}") from None
        where = f"{self.root / INPUT_LIST} entry {index}"
        pair = validate_entry(_Pair, raw, where)
        path = resolve_inside(self.root / "originals", pair.img_name, where)
        source_prompt = None
        if self._source_prompts is not None:
            if pair.img_name not in self._source_prompts:
                raise DatasetError(f"source prompts {self.params.source_prompts} have no entry for {pair.img_name!r}")
            source_prompt = self._source_prompts[pair.img_name]
            if not isinstance(source_prompt, str):
                raise DatasetError(
                    f"source prompts {self.params.source_prompts}: the entry for {pair.img_name!r} is not a string "
                    f"(got {source_prompt!r})"
                )
        return Sample(
            id=sample_id,
            image=load_rgb(path),
            target_prompt=pair.target_text,
            source_prompt=source_prompt,
            meta={"img_name": pair.img_name},
        )


class _Pair(BaseModel):
    """One entry of `input_list.json`; other keys are allowed (and ignored)."""

    img_name: str
    target_text: str


def sample_id(index: int, entry: Any) -> str:
    """`{index:03d}-{img_name}`, or `{index:03d}-invalid-entry` when the entry has no string img_name.

    Unique either way: the index comes first and has no "-" in it.
    """
    name = entry.get("img_name") if isinstance(entry, dict) else None
    return f"{index:03d}-{name if isinstance(name, str) else 'invalid-entry'}"


def cache_dir(override: str | None = None) -> Path:
    """Where `download` puts TEdBench: `override`, else $EDITSWEEP_CACHE/tedbench, else ~/.cache/editsweep/tedbench."""
    if override is not None:
        return Path(override).expanduser()
    base = os.environ.get("EDITSWEEP_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "editsweep") / "tedbench"


def download(dest: Path, base_url: str = BASE_URL) -> Path:
    """Fetch every file of `SHA256` from `base_url` into `dest`, verified; return `dest`.

    Files already in `dest` with the right hash are kept. Each download is written under a temporary
    name and renamed only once its hash matches, so concurrent workers and interrupted runs never
    leave a partial or wrong file; a mismatch raises `DatasetError` naming the file and both hashes.
    """
    for rel, expected in SHA256.items():
        path = dest / rel
        if path.is_file():
            if _sha256(path) == expected:
                continue
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = base_url.rstrip("/") + "/" + urllib.parse.quote(rel)
        _fetch_verified(url, path, rel, expected)
    return dest


def _fetch_verified(url: str, path: Path, rel: str, expected: str) -> None:
    """Stream `url` to a temporary file beside `path`, and rename it to `path` if its sha256 is `expected`."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as e:
                raise DatasetError(f"cannot download tedbench file {url}: {e}") from e
        actual = digest.hexdigest()
        if actual != expected:
            raise DatasetError(
                f"checksum mismatch for tedbench file {rel} from {url}: expected sha256 {expected}, got {actual}"
            )
        # mkstemp creates the file private (0600); a cache may be shared, so make it readable like any download.
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
