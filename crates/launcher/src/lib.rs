//! kubevirt-launcher (see README.md).
