//! The dashboard.
/// The page.
pub const PAGE: &str = "<html></html>";
