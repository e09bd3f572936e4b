//! kubevirt-podnet (see README.md).
