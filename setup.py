"""phobbit: parallel Hyperband for Keras models on a box of GPUs."""

from pathlib import Path

from setuptools import find_packages, setup

# What the test suite needs (the README's second quick-start command installs it).
TEST = [
    "pytest>=7",
    # the fast lane runs on every core: python -m pytest -m "not slow" -n auto
    "pytest-xdist>=3.5",
    "scikit-learn>=1.3",
    "hypothesis>=6",
    "psutil>=5.9",
    "dask[distributed]>=2024.1",
    "optuna>=3.0",
    "tensorboard>=2.16",
    "matplotlib>=3.7",
    "jax>=0.4.30",
    # tests/test_keras_tuner.py runs Keras Tuner's examples against the real package.
    "keras-tuner>=1.4",
]

setup(
    name="phobbit",
    version="0.1.0",
    description="Parallel Hyperband for Keras: one worker pinned to each GPU, nothing lost.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["phobbit", "phobbit.*"]),
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.0",
        "tensorflow>=2.16",
        "numpy>=1.24",
        "pandas>=2.0",
        "joblib>=1.4",
        "filelock>=3.12",
        "rich>=13.0",
    ],
    extras_require={
        "test": TEST,
        "examples": ["scikit-learn>=1.3"],
        "tensorboard": ["tensorboard>=2.16"],
        "plot": ["matplotlib>=3.7"],
        "jax": ["jax>=0.4.30"],
        "dask": ["dask[distributed]>=2024.1"],
        # benchmarks/search_quality.py: plots and the peers. DEHB itself is installed with
        # `pip install --no-deps dehb` (its metadata pins numpy<2, which would downgrade the
        # numpy TensorFlow needs); these are the dependencies it uses.
        "bench": [
            "matplotlib>=3.7",
            "optuna>=4.0",
            "ConfigSpace>=1.0",
            "loguru>=0.7",
            "dask[distributed]>=2024.1",
            "scipy>=1.10",
            # benchmarks/keras_tuner_compare.py and keras_models.py: the peer tuner.
            "keras-tuner>=1.4",
        ],
        "tpe": ["optuna>=3.0"],
        "dev": [*TEST, "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["phobbit=phobbit.cli:main"]},
)
