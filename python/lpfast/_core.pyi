# Type stubs for the compiled extension. Private: the lpfast package validates arguments
# and calls these with C-contiguous arrays of one float dtype.
from typing import Optional

import numpy as np
import numpy.typing as npt

def has_openmp() -> bool: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def check_csr(
    indptr: npt.NDArray[np.integer], indices: npt.NDArray[np.integer], rows: int, cols: int, name: str = "S"
) -> None: ...
def doped_kron_matmul(
    x: npt.NDArray[np.floating],
    A: npt.NDArray[np.floating],
    B: npt.NDArray[np.floating],
    indptr: Optional[npt.NDArray[np.integer]],
    indices: Optional[npt.NDArray[np.integer]],
    data: Optional[npt.NDArray[np.floating]],
    bias: Optional[npt.NDArray[np.floating]],
    out: npt.NDArray[np.floating],
) -> None: ...
