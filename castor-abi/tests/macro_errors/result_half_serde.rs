// Serialize alone is not enough: `join` decodes the result.

#[derive(serde::Serialize)]
pub struct Invoice {
    pub total: u64,
}

#[castor_abi::task(thread)]
pub fn invoice() -> Invoice {
    Invoice { total: 3 }
}

fn main() {}
