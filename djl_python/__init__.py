"""The djl_python API that DJL Serving handlers import: Input, Output, PairList.

A model.py written for DJL Serving imports these names and runs here unchanged.
"""

from .inputs import Input
from .outputs import Output
from .pair_list import PairList

__all__ = ["Input", "Output", "PairList"]
