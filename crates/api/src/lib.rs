//! kubevirt-api (see README.md).
