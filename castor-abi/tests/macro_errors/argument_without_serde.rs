// A task's arguments are stored until the task runs: they must derive Serialize and
// Deserialize.

pub struct Order {
    pub id: u64,
}

#[castor_abi::task(process)]
pub fn ship(order: Order, express: bool) -> u64 {
    if express { order.id } else { 0 }
}

fn main() {}
