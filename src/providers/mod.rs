//! Provider clients: typed HTTP and each provider's error semantics. They know nothing of
//! the queue; jobs/ decides what an error means for a job.

pub mod ebay;
pub mod smseagle;
