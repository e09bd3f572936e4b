//! kubevirt-hypervisor (see README.md).
