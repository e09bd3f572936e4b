//! kubevirt-handler (see README.md).
