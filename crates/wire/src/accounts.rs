//! Accounts and their keys, which only an admin makes and lists.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/accounts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateAccount {
    pub name: String,
}

/// `POST /v1/accounts`'s answer; the only time the key is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewAccount {
    /// `caged_<key id>_<secret>`.
    pub api_key: String,
    pub created_at: String,
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    pub admin: bool,
    pub created_at: String,
    pub id: String,
    pub name: String,
}

/// `GET /v1/accounts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountList {
    pub accounts: Vec<AccountView>,
}
