//! Build plans.
