// The partition key is the argument's text: its type must implement `Display`.

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Customer {
    pub id: u64,
}

#[castor_abi::task(thread, concurrency = 1, concurrency_key = customer)]
pub fn invoice(customer: Customer, amount: i64) {
    let _ = (customer.id, amount);
}

fn main() {}
