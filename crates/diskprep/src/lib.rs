//! kubevirt-diskprep (see README.md).
