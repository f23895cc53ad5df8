"""File names, checksums and download locations of the supported datasets.

Provenance of the checksums:

* ``MNIST_MD5``: the md5 sums published for the four original ``.gz`` files of the
  MNIST database (the same values torchvision lists).
* ``MNIST_RAW_MD5``: md5 of the *decompressed* content of those four ``.gz`` files,
  computed here from copies whose ``.gz`` md5 matches ``MNIST_MD5``; used to verify
  uncompressed IDX files.
* ``CIFAR10_BIN_MD5``: md5 sums published for the files of the official CIFAR-10
  *binary version* (``cifar-10-batches-bin/*.bin``, 30730000 bytes each).
* ``CIFAR10_PY_MD5``: md5 sums published for the batch files of the official CIFAR-10
  *python version* (``cifar-10-batches-py/``; pickles, only unpickled after a match).
* ``CIFAR10_BIN_ARCHIVE``: the official ``cifar-10-binary.tar.gz`` and its md5.

The tables are plain module-level dicts so that tests can patch single entries
(``monkeypatch.setitem``); the loaders look them up at call time.
"""

from __future__ import annotations

#: Environment variable naming the dataset root folder.
DATA_ENV = "CASCADE_ADV_DATA"
#: Environment variable with a download base URL (or several, comma-separated)
#: that replaces the official ones in :data:`MIRRORS`.
MIRROR_ENV = "CASCADE_ADV_MIRROR"

#: Base URLs tried in order by ``download=True``; a file's URL is base + file name.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

MNIST_RAW_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

CIFAR10_BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

#: md5 of each official ``.bin`` file (for ``.bin.gz`` copies: of the decompressed content).
CIFAR10_BIN_MD5: dict[str, str] = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}

#: md5 of each official python-version batch (a pickle): verified BEFORE unpickling.
CIFAR10_PY_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

#: (file name, md5) of the official binary-version archive.
CIFAR10_BIN_ARCHIVE: dict[str, str] = {
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
}

CIFAR10_BIN_DIR = "cifar-10-batches-bin"
CIFAR10_PY_DIR = "cifar-10-batches-py"
CIFAR10_META = "batches.meta.txt"
