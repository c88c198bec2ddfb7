// The matrix aliases every part of the core uses: row-major point sets (rows are points,
// as in NumPy) and column-major double scratch for Grams and bases.
#pragma once

#include <Eigen/Core>

namespace lpfast {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using RowMap = Eigen::Map<RowMat<T>>;
template <class T>
using ConstRowMap = Eigen::Map<const RowMat<T>>;
template <class T>
using ConstColMap = Eigen::Map<const ColMat<T>>;
template <class T>
using ConstVecMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;
using MatD = Eigen::MatrixXd;
using VecD = Eigen::VectorXd;

}  // namespace lpfast
