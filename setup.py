"""Installation script for dnnbrain."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="dnnbrain",
    version="2.0.0.dev0",
    description="Probe deep networks like neurons: unit-level saliency maps, "
                "batched experiments and their evaluation.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.9",
    packages=find_packages(include=["dnnbrain", "dnnbrain.*"]),
    package_data={"dnnbrain": ["data/*.pth", "data/*.json", "data/stimuli/*", "metrics/*.c"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.22",
        "pillow>=9.0",
        "nibabel>=4.0",
        "pyyaml>=5.4",
        "matplotlib>=3.5",
        "scikit-image>=0.19",
        "scipy>=1.7",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "captum>=0.7", "grad-cam>=1.4", "timm>=0.9"],
        "timm": ["timm>=0.9"],
        "docs": ["sphinx>=6", "numpydoc>=1.5", "myst-parser>=2", "sphinx-mathjax-offline>=0.0.2"],
    },
    # bin/ holds thin shims for running from a checkout; installed, the same
    # programs come from these console scripts (installing both would clash).
    entry_points={
        "console_scripts": [
            "dnn_saliency=dnnbrain.cli.saliency:main",
            "dnn_saliency_batch=dnnbrain.cli.saliency_batch:main",
            "dnn_saliency_eval=dnnbrain.cli.saliency_eval:main",
            "dnn_act=dnnbrain.cli.act:main",
            "dnn_topstim=dnnbrain.cli.topstim:main",
            "dnn_probe=dnnbrain.cli.probe:main",
        ],
    },
)
