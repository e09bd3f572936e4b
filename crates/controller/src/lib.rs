//! kubevirt-controller (see README.md).
