"""The djl_python API that DJL Serving handlers import.

A model.py written for DJL Serving imports these names (and the modules inputs, outputs,
encode_decode, np_util, pair_list, session_manager, service_loader, test_model) unchanged.
"""

from .inputs import Input
from .outputs import Output
from .pair_list import PairList
from .session_manager import Session, SessionManager

__version__ = "0.36.0"     # the DJL release whose public API this mirrors

__all__ = ["Input", "Output", "PairList", "Session", "SessionManager"]
