# Type stubs for the compiled extension. Private: the lpfast package validates arguments
# and calls these with C-contiguous arrays of one float dtype.
from typing import Callable, Optional, Union

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
    check_finite: bool = ...,
) -> None: ...
def weighted_pca(X: npt.NDArray[np.floating], weights: Optional[npt.NDArray[np.floating]], k: int) -> npt.NDArray[np.floating]: ...
def subspace_distances(X: npt.NDArray[np.floating], basis: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]: ...
def subspace_cost(X: npt.NDArray[np.floating], weights: Optional[npt.NDArray[np.floating]], basis: npt.NDArray[np.floating], p: float) -> float: ...
def lp_subspace_irls(
    X: npt.NDArray[np.floating],
    weights: Optional[npt.NDArray[np.floating]],
    init: npt.NDArray[np.floating],
    p: float,
    eps: float,
    tol: float,
    max_iter: int,
    callback: Optional[Callable[[int, float], object]],
) -> tuple[npt.NDArray[np.floating], list[float], int, bool]: ...
def projective_lookup(
    coef: npt.NDArray[np.floating],
    labels: npt.NDArray[np.int64],
    bases: npt.NDArray[np.floating],
    ids: npt.NDArray[np.int64],
    out: npt.NDArray[np.floating],
) -> None: ...
def projective_lookup_backward(
    coef: npt.NDArray[np.floating],
    labels: npt.NDArray[np.int64],
    bases: npt.NDArray[np.floating],
    ids: npt.NDArray[np.int64],
    grad: npt.NDArray[np.floating],
    padding_idx: int,
    dcoef: Optional[npt.NDArray[np.floating]],
    dbases: Optional[npt.NDArray[np.floating]],
) -> None: ...

lewis_sketch_min_rows_per_column: int

def sell_layout(
    indptr: npt.NDArray[np.integer],
    indices: npt.NDArray[np.integer],
    data: npt.NDArray[np.floating],
    cols: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.integer], npt.NDArray[np.floating]]: ...
class SellKernelF32U16:
    def __call__(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], check_finite: bool) -> None: ...

class SellKernelF32I32:
    def __call__(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], check_finite: bool) -> None: ...

class SellKernelF64U16:
    def __call__(self, x: npt.NDArray[np.float64], out: npt.NDArray[np.float64], check_finite: bool) -> None: ...

class SellKernelF64I32:
    def __call__(self, x: npt.NDArray[np.float64], out: npt.NDArray[np.float64], check_finite: bool) -> None: ...

def sell_kernel(
    A: npt.NDArray[np.floating],
    Bt: npt.NDArray[np.floating],
    slice_ptr: npt.NDArray[np.int64],
    row_of: npt.NDArray[np.int32],
    indices: npt.NDArray[np.integer],
    data: npt.NDArray[np.floating],
    bias: Optional[npt.NDArray[np.floating]],
) -> Union[SellKernelF32U16, SellKernelF32I32, SellKernelF64U16, SellKernelF64I32]: ...
def csr_sampled_product(
    dy: npt.NDArray[np.floating],
    x: npt.NDArray[np.floating],
    indptr: npt.NDArray[np.integer],
    indices: npt.NDArray[np.integer],
    out: npt.NDArray[np.floating],
) -> None: ...
def kron_factor_grads(
    x: npt.NDArray[np.floating],
    dy: npt.NDArray[np.floating],
    A: npt.NDArray[np.floating],
    B: npt.NDArray[np.floating],
    dA: npt.NDArray[np.floating],
    dB: npt.NDArray[np.floating],
) -> None: ...
def lewis_weights(
    X: npt.NDArray[np.floating],
    p: float,
    tol: float,
    max_iter: int,
    sketch: bool,
    seed: int,
    out: npt.NDArray[np.floating],
) -> dict[str, object]: ...
def k_subspaces_assign(
    X: npt.NDArray[np.floating], bases: npt.NDArray[np.floating]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.floating]]: ...
def k_subspaces_seed(
    X: npt.NDArray[np.floating],
    weights: npt.NDArray[np.float64],
    n_subspaces: int,
    dim: int,
    p: float,
    seeding: int,
    seed: int,
    stream: int,
) -> npt.NDArray[np.floating]: ...
def k_subspaces_fit(
    X: npt.NDArray[np.floating],
    weights: npt.NDArray[np.float64],
    n_subspaces: int,
    dim: int,
    p: float,
    max_iter: int,
    tol: float,
    eps: float,
    irls_steps: int,
    seeding: int,
    n_init: int,
    seed: int,
    init_bases: Optional[npt.NDArray[np.floating]],
    coefficients: bool,
) -> tuple[object, ...]: ...

class DopedLstmF32:
    num_layers: int
    input_size: int
    hidden_size: int
    nbytes: int
    def __init__(self, layers: list[tuple]) -> None: ...
    def step(
        self,
        x: npt.NDArray[np.float32],
        h: npt.NDArray[np.float32],
        c: npt.NDArray[np.float32],
        y: npt.NDArray[np.float32],
        h_out: npt.NDArray[np.float32],
        c_out: npt.NDArray[np.float32],
        check_finite: bool,
    ) -> None: ...
    def sequence(
        self,
        xs: npt.NDArray[np.float32],
        h0: Optional[npt.NDArray[np.float32]],
        c0: Optional[npt.NDArray[np.float32]],
        ys: npt.NDArray[np.float32],
        h_n: npt.NDArray[np.float32],
        c_n: npt.NDArray[np.float32],
        check_finite: bool,
    ) -> None: ...

class DopedLstmF64:
    num_layers: int
    input_size: int
    hidden_size: int
    nbytes: int
    def __init__(self, layers: list[tuple]) -> None: ...
    def step(
        self,
        x: npt.NDArray[np.float64],
        h: npt.NDArray[np.float64],
        c: npt.NDArray[np.float64],
        y: npt.NDArray[np.float64],
        h_out: npt.NDArray[np.float64],
        c_out: npt.NDArray[np.float64],
        check_finite: bool,
    ) -> None: ...
    def sequence(
        self,
        xs: npt.NDArray[np.float64],
        h0: Optional[npt.NDArray[np.float64]],
        c0: Optional[npt.NDArray[np.float64]],
        ys: npt.NDArray[np.float64],
        h_n: npt.NDArray[np.float64],
        c_n: npt.NDArray[np.float64],
        check_finite: bool,
    ) -> None: ...
