//! kubevirt-apiserver (see README.md).
