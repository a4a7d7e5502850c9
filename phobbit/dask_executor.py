"""The import path of ``DaskExecutor`` that scripts written for earlier versions use;
it lives in ``phobbit.execution.dask``."""

from __future__ import annotations

from phobbit.execution.dask import DaskExecutor

__all__ = ["DaskExecutor"]
